"""prefect.yaml deploys, and `prefect deployment run provision/...` works through a worker,
with Prefect's own CLI against the session's real Prefect server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from servenest import process
from servenest.state import load_state
from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.engine
PREFECT = str(Path(sys.executable).parent / "prefect")


def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # PREFECT_API_URL is in os.environ: the session's harness set it.
    return subprocess.run([PREFECT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.fixture(scope="module")
def worker(prefect_server):
    os.environ["PREFECT_API_URL"] = prefect_server
    assert prefect("work-pool", "create", "servenest-local", "--type", "process").returncode == 0
    deployed = prefect("--no-prompt", "deploy", "--all", timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    proc = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "servenest-local"], cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def test_every_spec_is_deployed_under_each_flow(worker):
    out = prefect("deployment", "ls")
    for flow in ("provision", "launch", "health-gate", "teardown"):
        assert f"{flow}/local-tiny" in out.stdout
    assert "sweep/cn-hangzhou" in out.stdout


def test_a_bad_spec_parameter_fails_the_run_with_the_reason(worker, make_spec):
    spec = make_spec("it-deploy-bad").model_dump(mode="json", exclude_unset=True)
    spec["model"] = "Qwen/Qwen3-9B"
    run = prefect("deployment", "run", "provision/local-tiny", "--params",
                  json.dumps({"spec": spec}), "--watch", "--watch-timeout", "120", timeout=180)
    assert run.returncode != 0
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_failed()
    assert "Qwen/Qwen3-9B' is not in the catalog" in state.message


def test_provision_and_teardown_run_as_deployments(worker, make_spec):
    spec = make_spec("it-deploy", port=free_port()).model_dump(mode="json", exclude_unset=True)
    # provision's last gate: a small benchmark (the engine shares the 2 cores with the client).
    spec["benchmark"] = {**spec["benchmark"], "enabled": True, "num_prompts": 10, "request_rate": 10.0,
                         "random_input_len": 16, "random_output_len": 8, "max_send_lag_ms": 2000.0}
    run = prefect("deployment", "run", "provision/local-tiny", "--params", json.dumps({"spec": spec}),
                  "--watch", "--watch-timeout", "400", timeout=450)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    state = load_state("it-deploy")
    assert state is not None and process.session_members(state.engine["pgid"])
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        history = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bench-it-deploy"])))
    assert history, "provision's benchmark gate published no history"
    run = prefect("deployment", "run", "teardown/local-tiny", "--param", "name=it-deploy",
                  "--watch", "--watch-timeout", "120", timeout=180)
    assert run.returncode == 0, run.stdout[-3000:]
    assert load_state("it-deploy") is None
    assert not process.session_members(state.engine["pgid"])
