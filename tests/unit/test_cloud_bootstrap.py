"""servenest/cloud/bootstrap.py: the host bootstrap renders clean bash and, run on emulated
hosts that start bare, installs what serving needs; a rerun does nothing; faults are clear."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from servenest.cloud import bootstrap
from servenest.cloud.assistant import CommandResult
from servenest.errors import HostCommandError
from servenest.rehearsal.hosts import EmulatedHosts
from servenest.spec import load_spec_file
from tests.unit.test_cloud_scripts import _shellcheck

REPO = Path(__file__).resolve().parents[2]
H20 = "ecs.ebmgn8v.48xlarge"
A10X4 = "ecs.gn7i-4x.8xlarge"


def shipped_ecs_specs():
    specs = [load_spec_file(p) for p in sorted((REPO / "deployments").glob("*.yaml"))]
    return [s for s in specs if s.topology in ("ecs-single", "ecs-dual")]


def test_every_shipped_ecs_spec_renders_a_shellcheck_clean_bootstrap(tmp_path):
    shellcheck = _shellcheck()
    specs = shipped_ecs_specs()
    assert len(specs) >= 10
    for spec in specs:
        for itype in spec.cloud.instance_types:
            path = tmp_path / f"{spec.name}-{itype}.sh"
            path.write_text(bootstrap.bootstrap_script(spec, itype))
            subprocess.run(["bash", "-n", str(path)], check=True)
            lint = subprocess.run([shellcheck, "--shell=bash", str(path)], capture_output=True, text=True)
            assert lint.returncode == 0, f"{path.name}:\n{lint.stdout}"


def test_pins_follow_the_gpu_and_the_machine(make_spec):
    r1 = load_spec_file(REPO / "deployments" / "deepseek-r1.yaml")
    qwq = load_spec_file(REPO / "deployments" / "qwq-32b-4xa10.yaml")
    h20, a10 = bootstrap.host_needs(r1, H20), bootstrap.host_needs(qwq, A10X4)
    assert h20.driver != a10.driver and h20.driver.version.startswith("550.")
    # Fabric manager only where NVSwitch is (ebmgn8v), of the driver's exact version.
    assert h20.fabric_manager and not a10.fabric_manager
    h20_script = bootstrap.bootstrap_script(r1, H20)
    assert 'PKGS+=("nvidia-fabricmanager-$BRANCH=$DRIVER-1")' in h20_script
    assert "FABRIC=0" in bootstrap.bootstrap_script(qwq, A10X4)
    # RDMA user-space only for the two-node topology.
    assert h20.rdma and not a10.rdma
    # The in-region mirror first (the metadata server's answer), vendor repositories after.
    assert bootstrap.METADATA_MIRROR in h20_script and "$MIRROR/docker-ce/linux/ubuntu" in h20_script


def test_plan_names_the_toolkit_and_nvidia_smi():
    spec = load_spec_file(REPO / "deployments" / "qwen3-235b.yaml")
    plan = bootstrap.plan(spec, H20)
    steps = " ".join(plan["steps"])
    assert plan["version"] == bootstrap.BOOTSTRAP_VERSION and plan["mode"] == "install"
    assert "nvidia-container-toolkit" in steps and "nvidia-smi" in steps and "fabricmanager" in steps


def test_a_prepared_image_is_only_checked(make_spec):
    spec = make_spec("ecs", cloud={"instance_types": [A10X4], "image": "m-bp1custom", "image_prepared": True})
    script = bootstrap.bootstrap_script(spec, A10X4)
    assert "MODE=check" in script
    assert bootstrap.plan(spec, A10X4)["mode"] == "check"


# -- on emulated hosts -------------------------------------------------------------------------
@pytest.fixture
def hosts(tmp_path):
    h = EmulatedHosts(tmp_path / "hosts", engine="noop", sleep_scale=0.0)
    h.address_of = lambda _iid: "127.0.0.1"
    h.instance_type_of = lambda _iid: H20
    h.image_of = lambda _iid: "ubuntu_22_04_uefi"
    yield h
    h.close()


def _run(hosts, script, iid="i-boot1") -> CommandResult:
    code, out = hosts.run(script, iid)
    return CommandResult(iid, "Success" if code == 0 else "Failed", code, out)


def test_a_bare_host_is_bootstrapped_once_and_a_rerun_does_nothing(hosts, make_spec):
    spec = make_spec("ecs", name="boot-dual", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
                     cloud={"instance_types": [H20], "nodes": 2, "image": "ubuntu_22_04_uefi"})
    script = bootstrap.bootstrap_script(spec, H20)
    bare = _run(hosts, "command -v nvidia-smi docker nvidia-ctk || echo missing")
    assert bare.output.strip().endswith("missing")
    first = _run(hosts, script)
    assert first.ok, first.output
    assert bootstrap.ready_line(first.output) == (bootstrap.BOOTSTRAP_VERSION, "550.127.08", 8)
    for step in ("step driver", "step docker", "step nvidia-container-toolkit", "step RDMA"):
        assert step in first.output
    downloads = (hosts.sandbox("i-boot1") / "downloads.log").read_text()
    assert "http://mirrors.cloud.aliyuncs.com/docker-ce/linux/ubuntu/gpg" in downloads
    assert _run(hosts, "systemctl is-active nvidia-fabricmanager docker").output.split() == ["active", "active"]
    started = time.monotonic()
    again = _run(hosts, script)
    assert again.ok and "nothing to do" in again.output and "step driver" not in again.output
    assert time.monotonic() - started < 5


def test_a_reboot_the_driver_needs_is_waited_out(hosts, make_spec):
    spec = make_spec("ecs", cloud={"instance_types": [H20], "image": "ubuntu_22_04_uefi"})
    script = bootstrap.bootstrap_script(spec, H20)
    hosts.set_fault("nouveau", 1)
    waits = []
    done = bootstrap.run_bootstrap(lambda ids: [_run(hosts, script, i) for i in ids], ["i-boot1"], waits.append)
    assert [h.reboots for h in done] == [1] and waits == [bootstrap.REBOOT_WAIT_S]
    assert done[0].gpus == 8


def test_a_failed_driver_install_is_a_clear_error(hosts, make_spec):
    spec = make_spec("ecs", cloud={"instance_types": [H20], "image": "ubuntu_22_04_uefi"})
    hosts.set_fault("fail-driver-install", 1)
    result = _run(hosts, bootstrap.bootstrap_script(spec, H20))
    assert not result.ok
    assert "FAILED: installing NVIDIA driver 550.127.08 failed" in result.output
    assert "dkms" in result.output.lower()


def test_check_mode_names_what_a_bare_image_lacks(hosts, make_spec):
    spec = make_spec("ecs", cloud={"instance_types": [H20], "image": "ubuntu_22_04_uefi", "image_prepared": True})
    result = _run(hosts, bootstrap.bootstrap_script(spec, H20))
    assert not result.ok and "nvidia-smi is not installed" in result.output
    with pytest.raises(HostCommandError, match="did not finish"):
        bootstrap.run_bootstrap(lambda ids: [result], ["i-boot1"], lambda _s: None)


def test_check_mode_passes_on_a_prepared_image(tmp_path, make_spec):
    hosts = EmulatedHosts(tmp_path / "hosts", engine="noop")
    hosts.instance_type_of = lambda _iid: A10X4
    hosts.image_of = lambda _iid: "m-bp1custom"
    try:
        spec = make_spec("ecs", cloud={"instance_types": [A10X4], "image": "m-bp1custom", "image_prepared": True})
        result = _run(hosts, bootstrap.bootstrap_script(spec, A10X4))
        assert result.ok, result.output
        assert bootstrap.ready_line(result.output)[2] == 4
        assert "step driver" not in result.output
        assert not (hosts.sandbox("i-boot1") / "downloads.log").exists()  # nothing fetched
    finally:
        hosts.close()
