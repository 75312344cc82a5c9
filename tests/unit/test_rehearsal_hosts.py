"""servenest/rehearsal/hosts.py: the rendered Cloud Assistant scripts really run.

Every test uses the no-op engine (no vLLM), its own loopback address and free ports, and
closes its hosts, which stops every container process.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servenest import process
from servenest.cloud import scripts
from servenest.health import parse_metrics
from servenest.rehearsal.hosts import OUTPUT_LIMIT, SGLANG_MESSAGE, EmulatedHosts, _rewrite_root
from servenest.spec import load_spec_data

KEY = "sk-emulated-host-test-7d41c2"
H20 = "ecs.ebmgn8v.48xlarge"
INSPECT = "docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' vllm"
_LAST_OCTET = itertools.count(40)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers -----------------------------------------------------------------------------------
def next_address() -> str:
    return f"127.0.0.{next(_LAST_OCTET)}"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def single_spec(port: int, **overrides):
    data = {
        "name": "emu-one", "model": "Qwen/Qwen3-0.6B", "topology": "ecs-single",
        "access": {"api_key_secret": "k", "port": port},
        "cloud": {"instance_types": ["ecs.gn7i-c16g1.4xlarge"], "zones": ["cn-hangzhou-i"]},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return load_spec_data(data)


def dual_spec(port: int):
    return load_spec_data({
        "name": "emu-dual", "model": "deepseek-ai/DeepSeek-R1", "topology": "ecs-dual",
        "access": {"api_key_secret": "k", "port": port},
        "cloud": {"instance_types": [H20], "nodes": 2, "image": "ubuntu_22_04_uefi"},
    })


def http_status(url: str, api_key: str | None = None) -> int | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with _NO_PROXY.open(urllib.request.Request(url, headers=headers), timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def ok(result: tuple[int, str]) -> str:
    code, output = result
    assert code == 0, output
    return output


@pytest.fixture
def hosts(tmp_path_factory):
    # mktemp names are shell-safe (a parametrized test's tmp_path has brackets).
    h = EmulatedHosts(tmp_path_factory.mktemp("hosts"), engine="noop", engine_python=sys.executable,
                      sleep_scale=0.001, timeout_s=60)
    h.addresses = {}
    h.address_of = h.addresses.__getitem__
    yield h
    h.close()


def add_host(hosts: EmulatedHosts, instance_id: str) -> str:
    hosts.addresses[instance_id] = address = next_address()
    return address


def model_dir(hosts: EmulatedHosts, instance_id: str, spec) -> Path:
    return Path(str(hosts.sandbox(instance_id) / "root") + scripts.model_dir(spec)[len("/root"):])


def launched(hosts: EmulatedHosts, instance_id: str, spec, role: str = "single", head: str | None = None) -> str:
    """Stage, deliver the key (where the role serves HTTP) and launch; the launch output."""
    ok(hosts.run(scripts.staging_script(spec, role), instance_id))
    if role in ("single", "master"):
        ok(hosts.run(scripts.key_script(KEY), instance_id))
    return ok(hosts.run(scripts.launch_script(spec, role, head), instance_id))


def serving(address: str, port: int) -> bool:
    return bool(wait_for(lambda: http_status(f"http://{address}:{port}/v1/models", KEY) == 200))


def serving_host(hosts: EmulatedHosts, instance_id: str) -> tuple[str, int]:
    """A single host with the no-op engine launched and answering: (address, port)."""
    address = add_host(hosts, instance_id)
    port = free_port(address)
    launched(hosts, instance_id, single_spec(port))
    assert serving(address, port)
    return address, port


def engine_pids(hosts: EmulatedHosts, instance_id: str) -> list[int]:
    state = hosts.containers(instance_id)["vllm"]
    return process.session_members(state["pgid"])


# -- the sandbox and the command runner ------------------------------------------------------------
def test_root_paths_are_rewritten_and_nothing_else():
    home = Path("/sb/i-1/root")
    text = ("DIR=/root/llm-model/x\n-v '/root/a:/root/a:ro'\ncd /root\nls /rootfs /x/root/y\n"
            "cat /etc/os-release /var/lib/s /etcd /x/etc\n")
    assert _rewrite_root(text, home) == (
        "DIR=/sb/i-1/root/llm-model/x\n-v '/sb/i-1/root/a:/sb/i-1/root/a:ro'\ncd /sb/i-1/root\n"
        "ls /rootfs /x/root/y\ncat /sb/i-1/etc/os-release /sb/i-1/var/lib/s /etcd /x/etc\n"
    )


def test_scripts_run_in_the_sandbox_with_a_clean_environment(hosts, monkeypatch):
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "orchestrator-secret")
    add_host(hosts, "i-env")
    out = ok(hosts.run(
        "echo \"$HOME $PWD\" > /root/where\n"
        "echo \"secret=${ALIBABA_CLOUD_ACCESS_KEY_SECRET:-none}\"\n"
        "echo \"docker=$(command -v docker)\"\necho \"python3=$(command -v python3 || true)\"\n"
        "echo \"home=$HOME\"\n",
        "i-env",
    ))
    home = hosts.sandbox("i-env") / "root"
    assert (home / "where").read_text() == f"{home} {home}\n"
    assert "home=/root\n" in out  # output shows the host's own paths, as on a real host
    assert "secret=none" in out
    # A host of an unknown (so prepared) image: docker is installed, in the host's own bin.
    assert f"docker={hosts.sandbox('i-env')}/usr/bin/docker" in out
    assert str(hosts.shim_dir) not in out.split("python3=")[1]  # python3 is the host's own
    assert hosts.commands("i-env")[0].startswith("echo \"$HOME $PWD\" > /root/where")


def test_a_failing_command_reports_its_code_and_output(hosts):
    add_host(hosts, "i-fail")
    assert hosts.run("set -euo pipefail\necho before\nfalse\necho after", "i-fail") == (1, "before\n")


def test_timeout_kills_the_command(hosts):
    add_host(hosts, "i-slow")
    hosts.timeout_s = 0.5
    started = time.monotonic()
    code, output = hosts.run("echo started\n/bin/sleep 30\n", "i-slow")
    assert code == 124
    assert output.startswith("started\n") and "exceeded its timeout of 0.5 s" in output
    assert time.monotonic() - started < 10


def test_output_keeps_the_last_24_kb(hosts):
    add_host(hosts, "i-chatty")
    output = ok(hosts.run("for i in $(seq 1 20000); do echo \"line $i\"; done", "i-chatty"))
    assert len(output.encode()) <= OUTPUT_LIMIT
    assert output.endswith("line 19999\nline 20000\n")


def test_nvidia_smi_shows_the_instance_types_gpus(hosts):
    add_host(hosts, "i-gpu")
    hosts.instance_type_of = lambda iid: H20
    listing = ok(hosts.run("nvidia-smi -L", "i-gpu")).splitlines()
    assert len(listing) == 8 and all(line.startswith(f"GPU {i}: NVIDIA H20 (UUID: GPU-") for i, line in enumerate(listing))
    query = ok(hosts.run("nvidia-smi --query-gpu=name,memory.total --format=csv,noheader", "i-gpu"))
    assert query.splitlines()[0] == "NVIDIA H20, 98304 MiB"
    assert "NVIDIA H20" in ok(hosts.run("nvidia-smi", "i-gpu"))


# -- staging ------------------------------------------------------------------------------------------
def test_staging_downloads_the_tiny_model_and_writes_the_manifests(hosts):
    add_host(hosts, "i-stage")
    spec = single_spec(8000)
    script = scripts.staging_script(spec, "single")
    output = ok(hosts.run(script, "i-stage"))
    assert "in place of Qwen/Qwen3-0.6B" in output and "servenest: staged 4 files" in output
    weights = model_dir(hosts, "i-stage", spec)
    listed = [line.split("  ", 1)[1] for line in (weights / ".servenest-sha256").read_text().splitlines()]
    assert listed == sorted(["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"])
    assert (weights / ".msc").exists()  # the hub client's bookkeeping, left out of the manifest
    assert (weights / ".servenest-sizes").read_text().count("\n") == 4
    check = subprocess.run(["sha256sum", "--check", "--strict", ".servenest-sha256"], cwd=weights,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    again = ok(hosts.run(script, "i-stage"))
    assert "skipping download" in again and "in place of" not in again
    assert hosts.commands("i-stage") == [script, script]


def test_full_verify_downloads_a_corrupted_file_again(hosts):
    add_host(hosts, "i-verify")
    spec = single_spec(8000, weights={"verify": "full"})
    script = scripts.staging_script(spec, "single")
    ok(hosts.run(script, "i-verify"))
    weights = model_dir(hosts, "i-verify", spec) / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"XXXX")  # same size: only the checksum notices

    output = ok(hosts.run(script, "i-verify"))
    assert "skipping download" not in output and "in place of" in output
    assert weights.read_bytes() == original


def test_quick_verify_notices_a_changed_size(hosts):
    add_host(hosts, "i-quick")
    spec = single_spec(8000)
    script = scripts.staging_script(spec, "single")
    ok(hosts.run(script, "i-quick"))
    config = model_dir(hosts, "i-quick", spec) / "config.json"
    config.write_text("{}")
    assert "in place of" in ok(hosts.run(script, "i-quick"))
    assert "Qwen2ForCausalLM" in config.read_text()


def test_download_is_retried_after_injected_failures(hosts):
    add_host(hosts, "i-retry")
    spec = single_spec(8000)
    hosts.fail_downloads = 2
    output = ok(hosts.run(scripts.staging_script(spec, "single"), "i-retry"))
    assert output.count("injected download failure") == 2 and "servenest: staged 4 files" in output
    assert hosts.fail_downloads == 0
    assert not (model_dir(hosts, "i-retry", spec) / "._____temp").exists()

    add_host(hosts, "i-gives-up")
    hosts.fail_downloads = 3
    code, output = hosts.run(scripts.staging_script(spec, "single"), "i-gives-up")
    assert code == 1 and "modelscope download failed 3 times" in output
    assert not (model_dir(hosts, "i-gives-up", spec) / ".servenest-sha256").exists()


def test_two_hosts_stage_at_once(hosts):
    spec = single_spec(8000)
    results = {}
    for iid in ("i-par-a", "i-par-b"):
        add_host(hosts, iid)
    threads = [threading.Thread(target=lambda i=iid: results.__setitem__(i, hosts.run(
        scripts.staging_script(spec, "single"), i))) for iid in ("i-par-a", "i-par-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i][0] for i in ("i-par-a", "i-par-b")] == [0, 0], results


# -- launch -------------------------------------------------------------------------------------------
def test_launch_without_staged_weights_fails(hosts):
    add_host(hosts, "i-nostage")
    ok(hosts.run(scripts.key_script(KEY), "i-nostage"))
    code, output = hosts.run(scripts.launch_script(single_spec(8000), "single"), "i-nostage")
    assert code == 1 and "are not staged (no manifest)" in output
    assert hosts.containers("i-nostage") == {}


def test_launch_without_the_key_file_fails(hosts):
    add_host(hosts, "i-nokey")
    spec = single_spec(8000)
    ok(hosts.run(scripts.staging_script(spec, "single"), "i-nokey"))
    code, output = hosts.run(scripts.launch_script(spec, "single"), "i-nokey")
    assert code == 1 and "API key file /root/.servenest/api-key is missing or empty" in output
    assert hosts.containers("i-nokey") == {}


def test_key_delivery_launch_and_teardown_keep_the_key_private(hosts):
    address = add_host(hosts, "i-key")
    port = free_port(address)
    spec = single_spec(port)
    outputs = [ok(hosts.run(scripts.staging_script(spec, "single"), "i-key")),
               ok(hosts.run(scripts.key_script(KEY), "i-key")),
               ok(hosts.run(scripts.launch_script(spec, "single"), "i-key"))]
    key_file = hosts.sandbox("i-key") / "root" / ".servenest" / "api-key"
    assert key_file.read_text() == KEY and key_file.stat().st_mode & 0o077 == 0

    models = f"http://{address}:{port}/v1/models"
    assert wait_for(lambda: http_status(models) == 401), "the engine never answered"
    assert http_status(models, KEY) == 200
    assert http_status(models, "sk-wrong") == 401
    state = hosts.containers("i-key")["vllm"]
    assert state["status"] == "running" and state["host"] == address
    pids = engine_pids(hosts, "i-key")
    assert pids
    for pid in pids:  # neither argv nor (for the no-op stand-in) the environment
        assert KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    outputs.append(ok(hosts.run("docker logs vllm; " + INSPECT, "i-key")))
    written = [p for p in hosts.root.rglob("*") if p.is_file() and p != key_file]
    assert any(p.name == "vllm.json" for p in written) and any(p.name == "vllm.log" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    for output in outputs:
        assert KEY not in output

    teardown = ok(hosts.run(scripts.teardown_script(), "i-key"))
    assert "servenest: removed container vllm" in teardown and KEY not in teardown
    assert process.port_is_free(address, port)
    assert not any(Path(f"/proc/{pid}").exists() and process.state(pid).alive for pid in pids)
    assert not key_file.exists() and hosts.containers("i-key") == {}


def test_launched_engine_answers_metrics_idle(hosts):
    address, port = serving_host(hosts, "i-metrics")
    with _NO_PROXY.open(f"http://{address}:{port}/metrics", timeout=2) as resp:
        values = parse_metrics(resp.read().decode())
    assert values["vllm:num_requests_running"] == 0 and values["vllm:num_requests_waiting"] == 0


def test_relaunch_removes_the_old_container_first(hosts):
    address, port = serving_host(hosts, "i-relaunch")
    spec = single_spec(port)
    old = engine_pids(hosts, "i-relaunch")
    output = ok(hosts.run(scripts.launch_script(spec, "single"), "i-relaunch"))
    assert output.startswith("vllm\n")  # `docker rm -f vllm` removed the running one
    assert not any(process.state(pid).alive for pid in old)
    assert serving(address, port)
    assert set(engine_pids(hosts, "i-relaunch")).isdisjoint(old)


def test_docker_run_refuses_a_name_in_use(hosts):
    serving_host(hosts, "i-conflict")
    code, output = hosts.run("docker run -d --name vllm --entrypoint /bin/bash img /x.sh", "i-conflict")
    assert code == 125 and 'The container name "/vllm" is already in use' in output


def test_docker_inspect_logs_and_missing_containers(hosts):
    address, port = serving_host(hosts, "i-inspect")
    assert ok(hosts.run(INSPECT, "i-inspect")) == "running 0 0\n"
    assert ok(hosts.run("docker inspect -f '{{.State.Status}}' vllm", "i-inspect")) == "running\n"
    assert ok(hosts.run("docker logs --tail 1 vllm", "i-inspect")) == (
        f"noop-server listening on http://{address}:{port}\n")
    assert "the no-op server stands in for" in ok(hosts.run("docker logs vllm", "i-inspect"))
    assert hosts.run("docker inspect -f '{{.State.Status}}' gone", "i-inspect") == (
        1, "Error: No such object: gone\n")
    assert hosts.run("docker rm -f gone", "i-inspect") == (1, "Error response from daemon: No such container: gone\n")
    assert hosts.run("docker logs gone", "i-inspect")[0] == 1
    assert hosts.run("docker exec vllm ray status", "i-inspect")[0] == 1  # not a Ray head


def kill_engine(hosts: EmulatedHosts, instance_id: str, sig: int = signal.SIGKILL) -> None:
    for pid in engine_pids(hosts, instance_id):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[0] != b"bash" and b"openai_noop" in b" ".join(argv):  # not its supervisor
            os.kill(pid, sig)


def test_crashed_engine_without_a_restart_policy_shows_its_exit_code(hosts):
    address = add_host(hosts, "i-crash")
    spec = single_spec(free_port(address))
    ok(hosts.run(scripts.staging_script(spec, "single"), "i-crash"))
    ok(hosts.run(scripts.key_script(KEY), "i-crash"))
    ok(hosts.run(scripts.launch_script(spec, "single").replace(
        f"--restart {scripts.RESTART_POLICY}", "--restart no"), "i-crash"))
    assert serving(address, spec.access.port)
    kill_engine(hosts, "i-crash")
    assert wait_for(lambda: ok(hosts.run(INSPECT, "i-crash")) == "exited 137 0\n")


def test_the_restart_policy_brings_a_crashed_engine_back_and_counts_it(hosts):
    address, port = serving_host(hosts, "i-policy")
    kill_engine(hosts, "i-policy")
    assert wait_for(lambda: ok(hosts.run(INSPECT, "i-policy")) == "running 0 1\n")
    assert serving(address, port)
    kill_engine(hosts, "i-policy")
    assert wait_for(lambda: ok(hosts.run(INSPECT, "i-policy")) == "running 0 2\n")
    assert serving(address, port)
    code, out = hosts.run("docker run -d --restart sometimes --name x --entrypoint /bin/bash img /x.sh", "i-policy")
    assert code == 125 and "invalid restart policy: sometimes" in out


def test_docker_restart_runs_the_container_again_and_needs_one(hosts):
    address, port = serving_host(hosts, "i-restart")
    kill_engine(hosts, "i-restart", signal.SIGSTOP)  # hung: alive, answering nothing
    assert http_status(f"http://{address}:{port}/health") is None
    old = engine_pids(hosts, "i-restart")
    assert ok(hosts.run(scripts.restart_script(), "i-restart")).startswith("vllm\n")
    assert serving(address, port) and set(engine_pids(hosts, "i-restart")).isdisjoint(old)
    assert ok(hosts.run(INSPECT, "i-restart")) == "running 0 0\n"  # a restart by hand is no policy restart
    ok(hosts.run("docker rm -f vllm", "i-restart"))
    code, out = hosts.run(scripts.restart_script(), "i-restart")
    assert code != 0 and "No such container: vllm" in out


def test_sglang_container_exits_with_the_rehearsal_message(hosts):
    address = add_host(hosts, "i-sglang")
    spec = single_spec(free_port(address), engine={"kind": "sglang"})
    output = launched(hosts, "i-sglang", spec)
    assert "servenest: started container vllm" in output
    assert ok(hosts.run(INSPECT, "i-sglang")) == "exited 1 0\n"
    assert SGLANG_MESSAGE in ok(hosts.run("docker logs vllm", "i-sglang"))
    ok(hosts.run(scripts.launch_script(spec, "single"), "i-sglang"))  # relaunch replaces it


def test_ecs_dual_worker_joins_the_masters_ray_status(hosts):
    hosts.instance_type_of = lambda iid: H20
    master = add_host(hosts, "i-master")
    add_host(hosts, "i-worker")
    port = free_port(master)
    spec = dual_spec(port)
    launched(hosts, "i-worker", spec, "worker", head=master)
    launched(hosts, "i-master", spec, "master")
    worker = hosts.containers("i-worker")["vllm"]
    assert worker["role"] == "ray-worker" and worker["ray_head"] == master and worker["status"] == "running"
    assert hosts.containers("i-master")["vllm"]["is_ray_head"]
    assert serving(master, port)

    status = ok(hosts.run("docker exec vllm ray status", "i-master"))
    assert [line.split()[0] for line in status.splitlines() if "node_" in line] == ["1", "1"]
    assert " 0.0/16.0 GPU" in status
    assert hosts.run("docker exec vllm ray status", "i-worker")[0] == 1

    worker_pids = engine_pids(hosts, "i-worker")
    hosts.release(["i-worker"])
    assert not any(process.state(pid).alive for pid in worker_pids)
    status = ok(hosts.run("docker exec vllm ray status", "i-master"))
    assert sum("node_" in line for line in status.splitlines()) == 1 and " 0.0/8.0 GPU" in status


# -- release ------------------------------------------------------------------------------------------
def test_release_stops_the_engine_and_removes_the_sandbox(hosts):
    address, port = serving_host(hosts, "i-gone")
    pids = engine_pids(hosts, "i-gone")
    hosts.release(["i-gone"])
    assert not any(process.state(pid).alive for pid in pids)
    assert process.port_is_free(address, port)
    assert not hosts.sandbox("i-gone").exists()
    hosts.release(["i-gone", "i-never-seen", "../escape"])  # never raises
    assert hosts.commands("i-gone")  # the record survives the instance


def test_release_stops_an_engine_that_was_never_recorded(hosts):
    """A `docker run` killed between starting the engine and writing its state."""
    address, port = serving_host(hosts, "i-orphan")
    pids = engine_pids(hosts, "i-orphan")
    (hosts.sandbox("i-orphan") / "containers" / "vllm.json").unlink()
    hosts.release(["i-orphan"])
    assert not any(process.state(pid).alive for pid in pids)
