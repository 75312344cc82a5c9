"""ecs-single and ecs-dual end to end on the emulated cloud: real SDK calls to the emulator,
the real host scripts run by bash on emulated hosts, the real CPU vLLM serving behind each
emulated instance's own address, the real Prefect flows (provision, benchmark, teardown)."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from servenest.errors import ApprovalDeniedError, BudgetExceededError
from servenest.rehearsal.ecs import emulated_cloud
from servenest.spec import DeploymentSpec
from tests.integration.conftest import REPO, TEST_KEY, free_port

ZONES = ["cn-hangzhou-i", "cn-hangzhou-j"]


@pytest.fixture(scope="module")
def tiny_tokenizer(engine_python, tmp_path_factory) -> str:
    """A local copy of what the emulated hosts serve, for the benchmark's token counts."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([engine_python, str(REPO / "servenest" / "engines" / "tiny_model.py"), str(out),
                    "--seed", "0"], check=True, capture_output=True, timeout=300)
    return str(out)


def ecs_spec(name: str, api_key_secret: str, **extra) -> DeploymentSpec:
    data = {
        "name": name, "model": "Qwen/Qwen3-0.6B", "topology": "ecs-single",
        "access": {"api_key_secret": api_key_secret, "port": free_port()},
        "cloud": {"zones": ZONES, "instance_types": ["ecs.gn7i-c8g1.2xlarge"]},
        "health": {"deadline_s": 240},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return DeploymentSpec.model_validate(data)


def live(emu) -> list:
    return [s for s in emu.stacks.values() if s.status != "DELETE_COMPLETE"]


def test_ecs_single_provision_benchmark_teardown_on_the_emulated_cloud(
        api_key_secret, engine_python, tiny_tokenizer, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.provision import provision
    from flows.teardown import teardown

    spec = ecs_spec("it-ecs", api_key_secret,
                    benchmark={"enabled": True, "num_prompts": 8, "request_rate": 4.0,
                               "random_input_len": 16, "random_output_len": 8,
                               "tokenizer": tiny_tokenizer, "max_send_lag_ms": 2000})
    with emulated_cloud(root=tmp_path / "hosts") as emu:
        emu.faults.update({"out_of_stock_zones": ["cn-hangzhou-i"]})  # capacity failover on the way
        result = provision(spec)
        assert result["gate_passed"]
        [inst] = emu.instances.values()
        assert inst["zone"] == "cn-hangzhou-j"
        url = result["base_url"]
        assert url == f"http://{inst['private_ip']}:{spec.access.port}" and inst["private_ip"] != "127.0.0.1"

        # The real engine answers behind the emulated instance's address, and only with the key.
        with httpx.Client(base_url=url, trust_env=False, timeout=60) as c:
            assert c.get("/v1/models").status_code == 401
            r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {TEST_KEY}"},
                       json={"model": spec.served_model_name, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0

        # The host started bare (public image ubuntu_22): the bootstrap installed the driver,
        # docker and the toolkit, then the readiness check passed, before any staging.
        assert [r["stage"] for r in result["stages"]][4:7] == ["bootstrap hosts", "check hosts", "stage weights"]
        names = [c.split("\n")[2] for c in emu.hosts.commands(inst["instance_id"])]
        assert names[0].startswith("# ServeNest host bootstrap") and names[1].startswith("# ServeNest readiness")
        bin_dir = emu.hosts.sandbox(inst["instance_id"]) / "usr" / "bin"
        assert {"nvidia-smi", "docker", "nvidia-ctk"} <= {p.name for p in bin_dir.iterdir()}

        # The scripts really ran on the host: key file root-only, weights with manifests.
        box = emu.hosts.sandbox(inst["instance_id"]) / "root"
        key_file = box / ".servenest" / "api-key"
        assert key_file.read_text() == TEST_KEY and oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert (box / "llm-model" / "Qwen" / "Qwen3-0.6B" / ".servenest-sha256").is_file()
        for script in emu.hosts.commands(inst["instance_id"]):
            assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        # Before any spend came the checks, in order, then one successful placement.
        actions = [c.action for c in emu.calls if c.status == 200]
        assert actions.index("DescribeAvailableResource") < actions.index("ValidateTemplate") \
            < actions.index("GetTemplateEstimateCost") < actions.index("CreateStack")

        with get_client(sync_client=True) as client:
            keys = {a.key for a in client.read_artifacts() if a.key}
        assert {"price-it-ecs", "weights-it-ecs", "connection-it-ecs", "bench-it-ecs"} <= keys

        out = teardown(spec.name)
        assert out["torn_down"] and len(out["instances"][spec.name]["stacks_deleted"]) == 1
        assert not live(emu) and not emu.instances
        # The engine went with its instance.
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2, trust_env=False)
        assert teardown(spec.name)["torn_down"] is False  # and twice is fine
    # No secret in what the flows logged or published.
    with get_client(sync_client=True) as client:
        for artifact in client.read_artifacts():
            assert TEST_KEY not in str(artifact.data)


def test_over_budget_stops_before_any_stack(api_key_secret, tmp_path):
    from flows.provision import provision

    spec = ecs_spec("it-ecs-budget", api_key_secret, cloud={"hourly_budget": 5})
    with emulated_cloud(root=tmp_path / "hosts", default_hourly_price=12.5) as emu:
        with pytest.raises(BudgetExceededError, match="12.50 CNY/hour"):
            provision(spec)
        assert not emu.calls_for("CreateStack") and not emu.stacks


def test_a_declined_approval_stops_before_any_stack(api_key_secret, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.flow_runs import resume_flow_run

    from flows.provision import provision

    spec = ecs_spec("it-ecs-approval", api_key_secret, cloud={"require_approval": True, "approval_timeout_s": 120})
    outcome: dict = {}

    def run():
        try:
            provision(spec)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    with emulated_cloud(root=tmp_path / "hosts") as emu:
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        paused = None
        while time.monotonic() < deadline and paused is None:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=["provision-it-ecs-approval"])))
            paused = next((r for r in runs if r.state and r.state.is_paused()), None)
            time.sleep(0.5)
        assert paused is not None, "the flow never paused for approval"
        assert not emu.calls_for("CreateStack")
        resume_flow_run(paused.id, run_input={"approve": False, "note": "too dear"})
        worker.join(timeout=120)
        assert isinstance(outcome.get("error"), ApprovalDeniedError)
        assert "too dear" in str(outcome["error"])
        assert not emu.calls_for("CreateStack")


def test_ecs_dual_on_the_emulated_cloud_reports_a_two_node_ray_cluster(api_key_secret, tmp_path):
    from flows.provision import provision
    from flows.teardown import teardown
    from servenest.topology import open_topology

    spec = DeploymentSpec.model_validate({
        "name": "it-dual", "model": "deepseek-ai/DeepSeek-R1", "topology": "ecs-dual",
        "access": {"api_key_secret": api_key_secret, "port": free_port()},
        "cloud": {"nodes": 2, "zones": ZONES, "instance_types": ["ecs.ebmgn8v.48xlarge"],
                  "image": "m-uefi-gpu-image", "image_prepared": True, "system_disk_gb": 800},
        "health": {"deadline_s": 60},
    })
    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        result = provision(spec)
        assert result["gate_passed"]
        diag = open_topology(spec).diagnostics()
        assert diag["ray"]["nodes"] == 2
        assert "running" in diag["master"]["container"] and "running" in diag["worker"]["container"]
        master, worker = (emu.hosts.containers(i)["vllm"] for i in emu.instances)
        assert {master["role"], worker["role"]} == {"engine", "ray-worker"}
        # A custom image is only checked (no installs), and the nodes reached each other.
        for iid in emu.instances:
            boot = next(c for c in emu.hosts.commands(iid) if "ServeNest host bootstrap" in c)
            assert "MODE=check" in boot
        assert any("readiness: reach the master" in c for i in emu.instances for c in emu.hosts.commands(i))
        teardown(spec.name)
        assert not live(emu)


def test_sweep_finds_and_deletes_only_orphan_stacks(api_key_secret, tmp_path):
    from flows.provision import provision
    from flows.sweep import sweep
    from flows.teardown import teardown
    from servenest.cloud.credentials import open_session
    from servenest.cloud.ros import Stacks
    from servenest.cloud.ros_template import render_template_yaml

    owned = ecs_spec("it-owned", api_key_secret, health={"deadline_s": 60})
    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        provision(owned)
        # A stack whose deployment is gone (its record lost, nothing registered).
        orphan_spec = ecs_spec("it-orphan", api_key_secret)
        stacks = Stacks(open_session("cn-hangzhou", "default"))
        stacks.create("servenest-it-orphan", render_template_yaml(orphan_spec, ZONES[0], "ecs.gn7i-c8g1.2xlarge"),
                      {}, {"servenest:deployment": "it-orphan", "servenest:managed": "true"}, "tok-1")
        dry = sweep(min_age_minutes=0)
        assert dry["orphans"] == 1 and dry["deleted"] == [] and len(live(emu)) == 2
        real = sweep(dry_run=False, min_age_minutes=0)
        assert len(real["deleted"]) == 1
        assert [s.name for s in live(emu)] == ["servenest-it-owned"]
        teardown(owned.name)
        assert not live(emu)


def test_servenest_up_emulate_rehearses_and_leaves_nothing(api_key_secret, tmp_path, capsys, monkeypatch):
    import json

    import yaml

    from servenest.cli import main

    monkeypatch.setenv("SERVENEST_HOME", str(tmp_path / "home"))
    spec = ecs_spec("it-rehearse", api_key_secret, health={"deadline_s": 60})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True)))
    assert main(["up", str(path), "--emulate", "--emulate-engine", "noop"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "rehearsal"'):])
    assert summary["stacks_left"] == [] and summary["cloud_api_calls"] > 10


def test_a_failed_driver_install_fails_clearly_and_leaves_nothing(api_key_secret, tmp_path):
    from flows.provision import provision
    from servenest.errors import HostCommandError

    spec = ecs_spec("it-nodriver", api_key_secret, health={"deadline_s": 60})
    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        emu.hosts.set_fault("fail-driver-install", 1)
        with pytest.raises(HostCommandError, match="installing NVIDIA driver 535.183.06 failed"):
            provision(spec)
        assert not live(emu) and not emu.instances  # torn down: keep_on_failure was not set


def test_the_readiness_check_names_each_host_and_problem(tmp_path):
    """Topology level (no flow): bootstrap a bare 8 x H20 host, then break it one way at a time."""
    from servenest.errors import HostCommandError
    from servenest.spec import load_spec_data
    from servenest.topology import open_topology

    spec = load_spec_data({
        "name": "it-ready", "model": "Qwen/Qwen3-0.6B", "topology": "ecs-single",
        "access": {"api_key_secret": "k", "port": free_port()},
        "cloud": {"zones": ZONES, "instance_types": ["ecs.ebmgn8v.48xlarge"], "image": "ubuntu_22_04_uefi"},
    })
    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        topology = open_topology(spec)
        topology.preflight()
        topology.provision()
        [iid] = emu.instances
        booted = topology.prepare_hosts()
        assert booted["hosts"][iid] == {"driver": "550.127.08", "gpus": 8, "reboots": 0}
        assert topology.state.resources["bootstrap"]["version"] == "1"
        assert topology.check_hosts()["hosts"][iid]["docker_gpus"] == "8"
        assert topology.prepare_hosts()["log"][iid].count("nothing to do") == 1  # rerun: stamp
        for fault, value, message in [
            ("missing-gpus", 1, f"{iid}: nvidia-smi shows 7 of 8 GPUs"),
            ("fabric-down", 1, f"{iid}: nvidia-fabricmanager is failed"),
            ("disk-free-gb", 5, f"{iid}: 5 GB free on the weights' disk"),
        ]:
            emu.hosts.set_fault(fault, value)
            with pytest.raises(HostCommandError, match=message):
                topology.check_hosts()
            emu.hosts.set_fault(fault, 0)
        topology.teardown()
        assert not live(emu)


def test_a_second_provision_starts_from_the_weights_cache(api_key_secret, tmp_path, capsys):
    """Cold staging leaves a snapshot; the next provision's disks come from it and move no
    bytes; a corrupt copy is caught by the manifest and restaged; a failed snapshot only
    costs the cache."""
    import json

    from flows.provision import provision
    from flows.sweep import sweep
    from flows.teardown import teardown
    from servenest.cli import main

    spec = ecs_spec("it-cache", api_key_secret, weights={"cache": "snapshot"}, health={"deadline_s": 60})

    def cache_ls() -> list[dict]:
        capsys.readouterr()
        assert main(["cache", "ls", "--format", "json"]) == 0
        return json.loads(capsys.readouterr().out)

    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        hosts = emu.hosts
        provision(spec)
        cold_bytes = hosts.bytes_downloaded()
        assert cold_bytes > 0
        [(iid, _)] = emu.instances.items()
        [disk] = [d for d in emu.disks.values() if d["InstanceId"] == iid]
        assert disk["DiskName"] == "servenest-weights" and not disk["SourceSnapshotId"]
        teardown(spec.name)
        [entry] = cache_ls()
        assert entry["model"] == "Qwen/Qwen3-0.6B" and entry["revision"] == "default" and entry["bytes"] > 0
        assert len(entry["digest"]) == 64 and entry["monthly_cny"] >= 0
        snapshot_id = entry["where"].split()[0]
        assert cache_ls()[0]["status"] == "accomplished"
        # The sweep keeps it while a spec names the model (deployments/qwen3-0-6b.yaml does).
        assert snapshot_id not in sweep(min_age_minutes=0)["stale_cache"]

        # Warm: the disk is made from the snapshot; nothing is downloaded.
        result = provision(spec)
        assert result["gate_passed"] and hosts.bytes_downloaded() == cold_bytes
        [(iid, _)] = emu.instances.items()
        [disk] = [d for d in emu.disks.values() if d["InstanceId"] == iid]
        assert disk["SourceSnapshotId"] == snapshot_id
        staging = next(c for c in hosts.commands(iid) if "ServeNest staging" in c)
        assert "FULL_VERIFY=1" in staging  # a cached copy is checked file by file
        teardown(spec.name)

        # A corrupt cache: detected by the manifest, restaged, and replaced.
        shard = next((emu.snapshot_root / snapshot_id).rglob("*.safetensors"))
        shard.write_bytes(b"\0" * shard.stat().st_size)  # same size: only sha256 can tell
        emu.faults.fail_snapshots = 1  # ... and the replacement snapshot fails: serving goes on
        assert provision(spec)["gate_passed"]
        assert hosts.bytes_downloaded() == 2 * cold_bytes
        cache_ls()  # the new snapshot settles on the next look
        statuses = {e["where"].split()[0]: e["status"] for e in cache_ls()}
        assert snapshot_id not in statuses and list(statuses.values()) == ["failed"]
        assert list(statuses) == sweep(dry_run=False, min_age_minutes=0)["cache_deleted"]
        teardown(spec.name)
        assert not live(emu) and not emu.disks
