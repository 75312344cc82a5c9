"""The Prefect side of operations, against the session's real `prefect server start`, with
Prefect's own CLI, a process worker, and the example REST client (examples/trigger.py):
deploy --all, runs through the CLI and through REST, a redeploy beside the live copy, a
trigger fired by an event, and the clean-up automation after a run whose worker died."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
)

from blocks.endpoint import ServeNestEndpoint
from servenest import process
from servenest.process import live_sigint
from servenest.state import load_state
from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.engine
PREFECT = str(Path(sys.executable).parent / "prefect")
TRIGGER = [sys.executable, str(REPO / "examples" / "trigger.py")]
# Heartbeats every 30 s (Prefect's minimum), so the zombie check can be shortened in a test.
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}


def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # PREFECT_API_URL and PREFECT_API_AUTH_STRING are in os.environ: the session set them.
    return subprocess.run([PREFECT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def trigger(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TRIGGER, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or dict(os.environ))


class Worker:
    """One `prefect worker start` process, restartable (a test kills it on purpose)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "servenest-local"], cwd=REPO,
            env={**os.environ, **WORKER_ENV},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=live_sigint)  # it stops on SIGTERM by sending itself SIGINT

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(prefect_server):
    assert prefect("work-pool", "create", "servenest-local", "--type", "process").returncode == 0
    deployed = prefect("--no-prompt", "deploy", "--all", timeout=600)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    w = Worker()
    w.start()
    yield w
    w.stop()


def spec_params(make_spec, name: str, **benchmark) -> dict:
    spec = make_spec(name, port=free_port()).model_dump(mode="json", exclude_unset=True)
    spec["benchmark"] = {**spec["benchmark"], **benchmark}
    return spec


def run_id(output: str) -> str:
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


def runs_of_flow(client, flow_name: str):
    """Runs of one flow, oldest expected start first. The server also holds each schedule's
    future runs (nightly redeploys for 100 days, watches every 5 min) and its default order
    is by random id, so an unsorted first page misses the run just created."""
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_every_spec_is_deployed_with_its_schedules_and_triggers(worker):
    rendered = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    (wanted,) = [d for d in rendered
                 if d["entrypoint"] == "flows/redeploy.py:redeploy" and d["name"] == "local-tiny"]
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        deployed = {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments(limit=200)}
        redeploy = client.read_deployment_by_name("redeploy/local-tiny")
        automations = client.read_automations()
    specs = [yaml.safe_load(p.read_text())["name"] for p in (REPO / "deployments").glob("*.yaml")]
    assert {"local-tiny", "qwen3-235b", "deepseek-r1", "ack-qwq-32b"} <= set(specs)
    for name in specs:
        for flow in ("provision", "launch", "health-gate", "benchmark", "teardown", "redeploy"):
            assert f"{flow}/{name}" in deployed
    assert "sweep/cn-hangzhou" in deployed
    (schedule,) = redeploy.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        wanted["schedules"][0]["cron"], "Asia/Shanghai", True)
    assert redeploy.global_concurrency_limit.limit == 1
    # prefect deploy turns each deployment trigger into an automation: a revision trigger
    # and a clean-up trigger per spec.
    assert len(automations) >= 2 * len(specs)


def test_a_bad_spec_parameter_fails_the_run_with_the_reason(worker, make_spec):
    spec = make_spec("it-deploy-bad").model_dump(mode="json", exclude_unset=True)
    spec["model"] = "Qwen/Qwen3-9B"
    run = prefect("deployment", "run", "provision/local-tiny", "--params",
                  json.dumps({"spec": spec}), "--watch", "--watch-timeout", "120", timeout=180)
    assert run.returncode != 0
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id(run.stdout)).state
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


def test_the_rest_client_refuses_a_wrong_auth_string(worker):
    env = {**os.environ, "PREFECT_API_AUTH_STRING": "servenest:wrong"}
    out = trigger("run", "teardown/local-tiny", "--param", "name=nobody", env=env, timeout=60)
    assert out.returncode != 0 and "401" in out.stderr


def test_provision_through_rest_redeploy_beside_it_and_a_failed_redeploy_keeps_it(worker, make_spec):
    name = "it-roll"
    spec = spec_params(make_spec, name)
    port = spec["access"]["port"]
    up = trigger("run", "provision/local-tiny", "--params", json.dumps({"spec": spec}), "--watch")
    assert up.returncode == 0, up.stdout + up.stderr
    first = ServeNestEndpoint.load(name)
    assert (first.instance_name, first.base_url) == (name, f"http://127.0.0.1:{port}")
    old_pgid = load_state(name).engine["pgid"]

    # A new revision comes up beside the old one (the budget is unset, the model needs no
    # GPU quota), passes its gate and benchmark, takes over, and the old one goes.
    roll = prefect("deployment", "run", "redeploy/local-tiny", "--params",
                   json.dumps({"spec": spec, "revision": "r2"}), "--watch", "--watch-timeout", "500",
                   timeout=560)
    assert roll.returncode == 0, roll.stdout[-3000:] + roll.stderr[-2000:]
    second = ServeNestEndpoint.load(name)
    assert second.instance_name == f"{name}-b"
    assert second.base_url == f"http://127.0.0.1:{port + 1}"
    assert second.spec["weights"]["revision"] == "r2"
    assert not process.session_members(old_pgid), "the old copy was not retired"
    assert load_state(name) is None and load_state(f"{name}-b") is not None
    key = {"Authorization": "Bearer sk-integration-test-key-0123456789"}
    assert httpx.get(second.base_url + "/v1/models", headers=key, trust_env=False).status_code == 200

    # A revision whose engine will not start: the run fails, the live copy keeps serving.
    broken = {**spec, "engine": {**spec["engine"], "extra_args": ["--no-such-engine-flag"]}}
    bad = prefect("deployment", "run", "redeploy/local-tiny", "--params", json.dumps({"spec": broken}),
                  "--watch", "--watch-timeout", "300", timeout=360)
    assert bad.returncode != 0
    after = ServeNestEndpoint.load(name)
    assert (after.instance_name, after.base_url) == (second.instance_name, second.base_url)
    assert httpx.get(after.base_url + "/v1/models", headers=key, trust_env=False).status_code == 200
    assert load_state(name) is None or not load_state(name).engine, "the failed candidate was left"

    down = prefect("deployment", "run", "teardown/local-tiny", "--param", f"name={name}",
                   "--watch", "--watch-timeout", "120", timeout=180)
    assert down.returncode == 0, down.stdout[-3000:]
    assert load_state(f"{name}-b") is None
    with pytest.raises(ValueError, match="Unable to find block document"):
        ServeNestEndpoint.load(name)


def test_a_published_revision_starts_the_models_redeploys(worker):
    revision = f"rev-{time.time_ns()}"
    out = trigger("publish-revision", "servenest/tiny-qwen2", revision, timeout=60)
    assert out.returncode == 0, out.stderr

    def triggered():
        with get_client(sync_client=True) as client:
            runs = runs_of_flow(client, "redeploy")
        return [r for r in runs if r.parameters.get("revision") == revision]

    (run,) = wait_for(triggered, 60, what="the trigger's redeploy run")
    assert run.parameters["spec"]["name"] == "local-tiny"  # the deployment's own spec, merged
    # local-tiny is not registered here, so the redeploy ends at once, saying so.
    final = wait_for(lambda: (r := get_client(sync_client=True).read_flow_run(run.id)).state.is_final() and r,
                     120, what="the redeploy run to end")
    assert final.state.is_completed()


def test_the_watchs_down_event_runs_heal_through_the_automation(worker):
    from servenest.events import ENDPOINT_DOWN
    from tasks.watch import emit_endpoint_event
    from tests.integration.servers import drain_client_workers

    automation = yaml.safe_load((REPO / "deployments/automations/heal-on-down.yaml").read_text())
    automation["name"] += f"-test-{time.time_ns()}"
    created = prefect("automation", "create", "--from-json", json.dumps(automation))
    assert created.returncode == 0, created.stdout + created.stderr
    with get_client(sync_client=True) as client:
        heal_id = client.read_deployment_by_name("heal/local-tiny").id

        def heal_runs():
            return client.read_flow_runs(limit=200, deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[heal_id])))

        # The event exactly as the watch sends it; again if the server had not loaded the
        # new automation yet (it refreshes its triggers every few seconds).
        for _ in range(6):
            emit_endpoint_event.fn("local-tiny", ENDPOINT_DOWN, {"reasons": ["/health answered 503"]})
            drain_client_workers()
            with contextlib.suppress(AssertionError):
                wait_for(heal_runs, 10, what="a heal run")
                break
        (run,) = wait_for(heal_runs, 10, what="the automation's heal run")
        done = wait_for(lambda: (r := client.read_flow_run(run.id)).state.is_final() and r,
                        120, what="the heal run to end")
    assert done.name == "heal-local-tiny" and done.parameters == {"name": "local-tiny"}
    # local-tiny is not registered on this server: the heal finds nothing to mend and says so.
    assert done.state.is_completed(), done.state.message


def _flow_run_process(flow_run_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in (entry / "environ").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def test_a_run_whose_worker_died_is_crashed_and_cleaned_up_by_the_automations(worker, make_spec):
    # The shipped zombie automation, with three 30 s beats shortened to 45 s for the test.
    zombie = yaml.safe_load((REPO / "deployments/automations/crash-zombie-runs.yaml").read_text())
    zombie["name"] += f"-test-{time.time_ns()}"
    zombie["trigger"]["within"] = 45
    created = prefect("automation", "create", "--from-json", json.dumps(zombie))
    assert created.returncode == 0, created.stdout + created.stderr

    name = "it-zombie"
    spec = spec_params(make_spec, name)
    up = trigger("run", "provision/local-tiny", "--params", json.dumps({"spec": spec}))
    flow_run_id = json.loads(up.stdout)["flow_run_id"]
    # Once the engine is recorded, kill the run and its worker: nothing is left to report.
    pgid = wait_for(lambda: (s := load_state(name)) and s.engine.get("pgid"), 180, 0.5, "the engine")
    runner = wait_for(lambda: _flow_run_process(flow_run_id), 30, 0.2, "the flow run's process")
    os.kill(runner, signal.SIGKILL)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    worker.start()  # a fresh worker, for the teardown run the automation creates
    assert process.session_members(pgid), "the engine should outlive its orchestrator"

    with get_client(sync_client=True) as client:
        crashed = wait_for(lambda: (r := client.read_flow_run(flow_run_id)).state.is_crashed() and r,
                           150, 2, "the zombie run to be marked Crashed")
        assert "No heartbeat" in crashed.state.message

        def teardown_run():
            return [r for r in runs_of_flow(client, "teardown")
                    if r.parameters.get("failed_run_id") == flow_run_id]

        (cleanup,) = wait_for(teardown_run, 60, 1, "the clean-up teardown run")
        done = wait_for(lambda: (r := client.read_flow_run(cleanup.id)).state.is_final() and r,
                        120, 1, "the teardown run to end")
    assert done.state.is_completed(), done.state.message
    assert done.name == "teardown-local-tiny"  # the deployment's default; it found it-zombie from the run
    assert not process.session_members(pgid), "the automation's teardown left the engine running"
    assert load_state(name) is None
