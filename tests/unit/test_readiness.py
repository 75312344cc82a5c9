"""servenest/readiness.py: the facts script is clean bash; each wrong fact is a problem that
names the host; the peer check really connects."""

from __future__ import annotations

import subprocess

import pytest

from servenest import readiness
from servenest.readiness import HostFacts
from tests.unit.test_cloud_scripts import _shellcheck
from tests.unit.test_rehearsal_hosts import free_port

H20 = "ecs.ebmgn8v.48xlarge"
A10X8 = "ecs.gn7i-8x.16xlarge"


def good(gpus: int = 8, mib: int = 97871) -> dict[str, str]:
    return {"gpus": str(gpus), "memory_mib": ",".join([str(mib)] * gpus), "fabric": "active",
            "disk_free": str(600 * 10**9), "weights_present": "0", "docker_gpus": str(gpus)}


@pytest.fixture
def h20_spec(make_spec):
    return make_spec("ecs", model="Qwen/Qwen3-8B", cloud={"instance_types": [H20], "image": "ubuntu_22_04_uefi"})


def test_scripts_pass_bash_n_and_shellcheck(h20_spec, tmp_path):
    shellcheck = _shellcheck()
    for label, text in {
        "facts": readiness.facts_script(h20_spec, "egs-registry.example/vllm:1", "/root/llm-model/x"),
        "listen": readiness.listen_script("192.168.0.10"),
        "probe": readiness.probe_script("192.168.0.10"),
    }.items():
        path = tmp_path / f"{label}.sh"
        path.write_text(text)
        subprocess.run(["bash", "-n", str(path)], check=True)
        lint = subprocess.run([shellcheck, "--shell=bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{label}:\n{lint.stdout}"


def test_a_ready_host_has_no_problems(h20_spec, make_spec):
    assert readiness.problems(h20_spec, H20, HostFacts("i-ok", good())) == []
    a10 = make_spec("ecs", model="Qwen/Qwen3-8B")
    # An A10 reports 23028 MiB of its 24 GiB and needs no fabric manager.
    facts = good(8, 23028) | {"fabric": "inactive"}
    assert readiness.problems(a10, A10X8, HostFacts("i-a10", facts)) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"gpus": "7"}, "i-x: nvidia-smi shows 7 of 8 GPUs"),
    ({"memory_mib": "97871,97871,97871,97871,97871,97871,97871,40960"}, "i-x: GPU memory below the 96 GiB of a H20 (GPU 7: 40960 MiB)"),
    ({"fabric": "failed"}, "i-x: nvidia-fabricmanager is failed"),
    ({"fabric": ""}, "i-x: nvidia-fabricmanager is not installed"),
    ({"docker_gpus": "0", "docker_error": 'could not select device driver "" with capabilities: [[gpu]].'},
     "i-x: `docker run --gpus all` of the engine image sees 0 of 8 GPUs: could not select device driver"),
    ({"disk_free": str(20 * 10**9)}, "i-x: 20 GB free on the weights' disk, 47 GB needed"),
])
def test_each_wrong_fact_names_the_host_and_the_problem(h20_spec, change, message):
    found = readiness.problems(h20_spec, H20, HostFacts("i-x", good() | change))
    assert len(found) == 1 and found[0].startswith(message), found


def test_weights_already_on_disk_need_no_new_space(h20_spec):
    facts = good() | {"disk_free": str(35 * 10**9), "weights_present": str(16 * 10**9)}
    assert readiness.problems(h20_spec, H20, HostFacts("i-x", facts)) == []


def test_the_peer_check_connects_to_real_listeners():
    ports = (free_port("127.0.0.1"), free_port("127.0.0.1"))
    subprocess.run(["bash", "-c", readiness.listen_script("127.0.0.1", ports, seconds=20)], check=True, timeout=30)
    out = subprocess.run(["bash", "-c", readiness.probe_script("127.0.0.1", ports)], capture_output=True,
                         text=True, timeout=30).stdout
    facts = readiness.parse_facts(out)
    assert readiness.peer_problems("i-w", "i-m", "127.0.0.1", facts, ports) == []
    closed = free_port("127.0.0.1")  # nothing listens there
    out = subprocess.run(["bash", "-c", readiness.probe_script("127.0.0.1", (closed,))], capture_output=True,
                         text=True, timeout=30).stdout
    [problem] = readiness.peer_problems("i-w", "i-m", "127.0.0.1", readiness.parse_facts(out), (closed,))
    assert problem.startswith(f"i-w: cannot reach i-m at 127.0.0.1 on port(s) {closed}")
