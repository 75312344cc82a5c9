"""servenest/topology/local.py: the local topology, without starting the engine."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from servenest import paths, process
from servenest.errors import PortInUseError, ServeNestError, SpecError, WeightsError
from servenest.manifest import MANIFEST_NAME
from servenest.spec import load_spec_file
from servenest.state import DeploymentState, load_state, state_path
from servenest.topology import EngineStatus, open_topology
from servenest.topology.local import LocalTopology, download_commands

from .conftest import LOCAL_TINY


class NoCommands:
    """A CommandRunner that fails the test if the topology runs anything."""

    def __init__(self):
        self.calls = []

    def __call__(self, commands, env=None):
        self.calls.append(list(commands))
        raise AssertionError(f"no command should run here, got {commands}")


def topology(spec, run=None) -> LocalTopology:
    return LocalTopology(spec, DeploymentState(spec.name, "local"), run or NoCommands())


# -- plan ---------------------------------------------------------------------------------------
def test_plan_has_the_launch_command_with_the_key_from_its_secret_block(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-real-key-that-must-not-leak")
    spec = load_spec_file(LOCAL_TINY)
    run = NoCommands()
    plan = topology(spec, run).plan()
    words = shlex.split(plan["launch"])
    assert "VLLM_API_KEY=<from Secret block local-tiny-api-key>" in words
    assert "SERVENEST_DEPLOYMENT=local-tiny" in words
    assert "VLLM_CPU_KVCACHE_SPACE=1" in words
    module = words.index("-m")
    assert words[module + 1] == "vllm.entrypoints.openai.api_server"
    args = words[module + 2 :]
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--served-model-name") + 1] == "tiny"
    assert not any(a.startswith("--api-key") for a in args)
    assert "sk-real-key-that-must-not-leak" not in json.dumps(plan)
    assert plan["endpoint"] == "http://127.0.0.1:8000/v1"
    assert "tiny_model.py" in plan["stage_weights"]  # the built-in model is generated
    assert "--no-deps" in plan["engine_environment"]
    assert run.calls == []


def test_plan_touches_nothing(servenest_home):
    spec = load_spec_file(LOCAL_TINY)
    topology(spec).plan()
    assert not servenest_home.exists()


def test_plan_with_own_engine_python_skips_the_managed_environment(make_spec, tmp_path):
    # A CUDA host's own vLLM: the hardware comes from cloud.gpu_kind / gpus_per_node.
    spec = make_spec(local={"engine_python": str(tmp_path / "venv" / "bin" / "python")},
                     cloud={"gpu_kind": "A10", "gpus_per_node": 2})
    plan = topology(spec).plan()
    assert "engine_environment" not in plan
    words = shlex.split(plan["launch"])
    assert words.count(str(tmp_path / "venv" / "bin" / "python")) == 1
    assert words[words.index("--tensor-parallel-size") + 1] == "2"
    assert "--gpu-memory-utilization" in words
    assert not any(w.startswith("VLLM_CPU_KVCACHE_SPACE=") for w in words)


def test_public_endpoint_listens_on_all_interfaces(make_spec):
    spec = make_spec(access={"public": True, "allowed_cidrs": ["10.0.0.0/8"], "port": 8123})
    t = topology(spec)
    assert t.host == "0.0.0.0"
    words = shlex.split(t.plan()["launch"])
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert t.endpoint().base_url == "http://127.0.0.1:8123"  # clients on this machine
    assert t.endpoint().public is True


def test_open_topology_picks_the_spec_topology(make_spec):
    from servenest.topology import AckTopology, EcsTopology

    assert isinstance(open_topology(make_spec()), LocalTopology)
    assert isinstance(open_topology(make_spec("ecs")), EcsTopology)
    assert isinstance(open_topology(make_spec("ack")), AckTopology)


# -- provision -----------------------------------------------------------------------------------
def test_provision_refuses_a_taken_port_before_anything_else(make_spec, listening_socket,
                                                             monkeypatch, servenest_home):
    from servenest.engines import environment

    _, port = listening_socket
    touched = []
    monkeypatch.setattr(environment, "is_ready", lambda *a, **k: touched.append("is_ready") or True)
    monkeypatch.setattr(environment, "creation_lock", lambda: touched.append("lock"))
    spec = make_spec(access={"port": port})
    run = NoCommands()
    with pytest.raises(PortInUseError) as info:
        topology(spec, run).provision()
    msg = str(info.value)
    assert f"port {port}" in msg
    assert f"pid {os.getpid()}" in msg  # who holds it
    assert "access.port" in msg  # what to change
    assert run.calls == [] and touched == []
    assert not state_path(spec.name).exists()
    assert not servenest_home.exists()


def test_provision_with_a_missing_engine_python_is_refused(make_spec, tmp_path, listening_socket):
    from servenest.errors import EngineEnvironmentError

    sock, port = listening_socket
    sock.close()  # a free port
    spec = make_spec(access={"port": port}, local={"engine_python": str(tmp_path / "nope" / "python")})
    with pytest.raises(EngineEnvironmentError, match="does not exist"):
        topology(spec).provision()


# -- download commands ------------------------------------------------------------------------------
ENGINE_PY = "/opt/engine env/bin/python"  # a space, to check the quoting


def last_words(commands: list[str]) -> list[str]:
    return shlex.split(commands[-1])


@pytest.mark.parametrize("revision", [None, "v1.0"])
def test_modelscope_download_uses_the_official_client(make_spec, tmp_path, revision):
    spec = make_spec(model="Qwen/Qwen3-8B", weights={"source": "modelscope", "revision": revision})
    dest = tmp_path / "models dir" / "qwen3-8b"
    cmds = download_commands(spec, ENGINE_PY, dest)
    words = last_words(cmds)
    assert words[0] == "/opt/engine env/bin/modelscope"
    expected = ["download", "--model", "Qwen/Qwen3-8B"]
    expected += ["--revision", revision] if revision else []
    assert words[1:] == expected + ["--local_dir", str(dest)]
    assert shlex.split(cmds[0]) == ["mkdir", "-p", str(dest)]


@pytest.mark.parametrize("revision", [None, "refs/pr/1"])
def test_huggingface_download_uses_the_official_client(make_spec, tmp_path, revision):
    spec = make_spec(model="Qwen/Qwen3-8B", weights={"source": "huggingface", "revision": revision})
    dest = tmp_path / "hf"
    words = last_words(download_commands(spec, ENGINE_PY, dest))
    assert words[0] == "/opt/engine env/bin/hf"
    expected = ["download", "Qwen/Qwen3-8B"] + (["--revision", revision] if revision else [])
    assert words[1:] == expected + ["--local-dir", str(dest)]


def test_download_uses_repo_id_when_given(make_spec, tmp_path):
    spec = make_spec(model="Qwen/Qwen3-8B", weights={"source": "modelscope", "repo_id": "mirror/Qwen3-8B"})
    words = last_words(download_commands(spec, ENGINE_PY, tmp_path))
    assert words[words.index("--model") + 1] == "mirror/Qwen3-8B"


def test_oss_weights_are_refused_for_the_local_topology_at_validation(make_spec):
    # Refused when the spec is read, before any step runs.
    with pytest.raises(SpecError, match="local topology stages from builtin, local, modelscope"):
        make_spec(model="Qwen/Qwen3-8B", weights={"source": "oss", "oss_uri": "oss://bucket/qwen"})


def test_hub_weights_are_staged_under_the_models_dir(make_spec, servenest_home):
    spec = make_spec(model="Qwen/Qwen3-8B", weights={"source": "huggingface", "revision": "abc123"})
    root, manifest_at = topology(spec)._weights_dir()
    assert root == paths.models_dir() / "huggingface" / "Qwen--Qwen3-8B" / "abc123"
    assert manifest_at is None
    assert str(root).startswith(str(servenest_home / "models"))


# -- local weights ------------------------------------------------------------------------------------
@pytest.fixture
def user_model(tmp_path) -> Path:
    root = tmp_path / "my-models" / "qwen3-0.6b"
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen3"}')
    (root / "model.safetensors").write_bytes(b"\x00" * 2048)
    return root


def listing(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")}


def test_local_weights_get_a_manifest_in_our_cache_and_are_reused(make_spec, user_model):
    spec = make_spec(model="Qwen/Qwen3-0.6B", weights={"source": "local", "path": str(user_model)})
    before = listing(user_model)
    run = NoCommands()

    first = topology(spec, run).stage_weights()
    assert first.reused is False
    assert first.location == str(user_model.resolve())
    assert (first.files, first.bytes) == (2, 2048 + len('{"model_type": "qwen3"}'))
    assert listing(user_model) == before  # nothing written into the user's directory
    assert not (user_model / MANIFEST_NAME).exists()
    manifests = list((paths.models_dir() / "local-manifests").glob("*.json"))
    assert len(manifests) == 1

    second = topology(spec, run).stage_weights()
    assert second.reused is True
    assert second.digest == first.digest
    assert run.calls == []  # no engine, no download

    state = load_state(spec.name)
    assert state.weights == {"dir": str(user_model.resolve()), "digest": first.digest, "bytes": first.bytes}


def test_changed_local_weights_are_not_reused(make_spec, user_model):
    spec = make_spec(model="Qwen/Qwen3-0.6B", weights={"source": "local", "path": str(user_model)})
    first = topology(spec).stage_weights()
    (user_model / "model.safetensors").write_bytes(b"\x00" * 4096)
    again = topology(spec).stage_weights()
    assert again.reused is False
    assert again.digest != first.digest
    assert topology(spec).stage_weights().reused is True


def test_local_weights_path_that_is_not_a_directory(make_spec, tmp_path):
    spec = make_spec(model="Qwen/Qwen3-0.6B", weights={"source": "local", "path": str(tmp_path / "none")})
    with pytest.raises(WeightsError, match="not a directory"):
        topology(spec).stage_weights()


def test_empty_local_weights_directory(make_spec, tmp_path):
    (tmp_path / "empty").mkdir()
    spec = make_spec(model="Qwen/Qwen3-0.6B", weights={"source": "local", "path": str(tmp_path / "empty")})
    with pytest.raises(WeightsError, match="no weight files"):
        topology(spec).stage_weights()


def test_status_and_teardown_of_a_deployment_never_launched(make_spec):
    t = topology(make_spec())
    assert t.status().running is False and t.status().detail == "not launched"
    assert t.logs() == []
    assert t.teardown()["stopped"] is False
    with pytest.raises(ServeNestError, match="never launched here; nothing to restart"):
        t.restart_engine("sk-unused")


# -- status and teardown of a process group (a stand-in for the engine, never vLLM) -----------------
def stand_in_engine(spec, tmp_path, process_groups, script="sleep 300", mark=True):
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    if mark:
        env[process.MARK_ENV] = spec.name
    log = tmp_path / "engine.log"
    proc = process.start_group(["bash", "-c", script], env, log)
    process_groups.append(proc)
    t = topology(spec)
    t.state.engine = {"pid": proc.pid, "pgid": proc.pid, "log": str(log),
                      "host": "127.0.0.1", "port": spec.access.port}
    return t, proc


def wait_until(predicate, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_status_of_a_running_engine(make_spec, tmp_path, process_groups):
    spec = make_spec()
    t, proc = stand_in_engine(spec, tmp_path, process_groups)
    assert t.status() == EngineStatus(True, None, f"pid {proc.pid}")


def test_status_of_an_exited_engine_carries_its_exit_code(make_spec, tmp_path, process_groups):
    spec = make_spec()
    t, proc = stand_in_engine(spec, tmp_path, process_groups, script="echo boom; exit 7")
    assert wait_until(lambda: not t.status().running)
    st = t.status()
    assert (st.running, st.exit_code) == (False, 7)
    assert "exited" in st.detail
    assert t.logs() == ["boom"]


def test_status_of_a_pid_without_the_mark_is_not_ours(make_spec, tmp_path, process_groups):
    spec = make_spec()
    t, proc = stand_in_engine(spec, tmp_path, process_groups, mark=False)
    st = t.status()
    assert st.running is False and "not this deployment's engine" in st.detail


def test_teardown_stops_the_engine_group_and_is_safe_twice(make_spec, tmp_path, process_groups,
                                                           listening_socket):
    sock, port = listening_socket
    sock.close()
    spec = make_spec(access={"port": port}, local={"stop_grace_s": 2})
    t, proc = stand_in_engine(spec, tmp_path, process_groups, script="sleep 300 & wait")
    assert wait_until(lambda: len(process.group_members(proc.pid, spec.name)) == 2)
    first = t.teardown()
    assert first["stopped"] is True and first["signalled"] == 2 and first["killed"] == 0
    assert proc.wait(timeout=5) is not None
    assert t.state.engine == {}
    assert load_state(spec.name).engine == {}  # recorded before returning
    assert t.teardown()["stopped"] is False


def test_teardown_from_the_state_record_alone_stops_the_engine(tmp_path, process_groups):
    # A recorded spec that no longer validates must not keep an engine running.
    from servenest import process as proc_mod
    from servenest.state import DeploymentState

    proc = proc_mod.start_group(["bash", "-c", "sleep 300 & sleep 300 & wait"],
                                {"PATH": "/usr/bin:/bin", proc_mod.MARK_ENV: "old-deploy"},
                                tmp_path / "engine.log")
    process_groups.append(proc)
    import time

    deadline = time.monotonic() + 5
    while len(proc_mod.session_members(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    state = DeploymentState("old-deploy", "local", spec={"local": {"stop_grace_s": 1}, "unknown": 1},
                            engine={"pgid": proc.pid, "start_ticks": proc_mod.start_ticks(proc.pid),
                                    "host": "127.0.0.1", "port": 1})
    result = LocalTopology.teardown_recorded(state)
    assert result["stopped"] and result["signalled"] == 3
    assert not proc_mod.session_members(proc.pid)
