"""Scale-out: a Prefect server on PostgreSQL, two process workers on one pool, the real CLI.

A module of its own servers: Debian's PostgreSQL and a second ``prefect server start`` on
it (own PREFECT_HOME, own auth string), beside the session's SQLite server. Everything
goes through Prefect's command line as an operator would type it: create the pool, deploy
``prefect.yaml``, start two workers, run deployments. The last test reads the flow runs
back with SQL, straight from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time

import httpx
import pytest

from servenest import process
from servenest.process import live_sigint
from servenest.state import load_state
from tests.integration.conftest import REPO, TEST_KEY, free_port
from tests.integration.servers import PREFECT, postgres_server, prefect_server, stop_process_group

pytestmark = pytest.mark.engine
POOL = "servenest-local"
WORKERS = ("scaleout-a", "scaleout-b")
NAME = "pg-tiny"
SECRET = "pg-tiny-api-key"


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    """PostgreSQL, and a Prefect server with API auth on it."""
    root = tmp_path_factory.mktemp("scaleout")
    with postgres_server(root) as url, prefect_server(
            root / "prefect-home", database_url=url,
            auth_string=f"scaleout:{secrets.token_urlsafe(24)}") as server:
        yield server


def cli(server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``prefect ARGS`` from the repository root, as a client of ``server``."""
    return subprocess.run([PREFECT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **server.env})


@pytest.fixture(scope="module")
def runs():
    """Flow run ids the tests started, for the SQL check at the end."""
    return []


@pytest.fixture(scope="module")
def workers(pg, tmp_path_factory):
    created = cli(pg, "work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    # Without a `pull` section the deployments record this checkout; the workers run the
    # flows from it.
    deployed = cli(pg, "--no-prompt", "deploy", "--all", timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    logs = tmp_path_factory.mktemp("workers")
    procs: list[subprocess.Popen] = []
    try:
        for name in WORKERS:
            with open(logs / f"{name}.log", "wb") as out:
                # --limit 1: a worker busy with one run leaves the next to the other, so
                # runs created together spread over both.
                procs.append(subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"],
                    cwd=REPO, env={**os.environ, **pg.env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=live_sigint))
        yield logs
    finally:
        for proc in procs:
            stop_process_group(proc, grace_s=30.0)


def _read(pg, fn):
    from prefect.client.orchestration import get_client

    with pg.settings(), get_client(sync_client=True) as client:
        return fn(client)


def test_both_workers_are_online_for_the_pool(pg, workers):
    deadline = time.monotonic() + 90
    online: set[str] = set()
    while time.monotonic() < deadline:
        found = _read(pg, lambda c: c.read_workers_for_work_pool(POOL))
        online = {w.name for w in found if w.status.value == "ONLINE"}
        if online >= set(WORKERS):
            break
        time.sleep(1)
    assert online >= set(WORKERS), f"online: {online}; logs in {workers}"


def test_provision_and_teardown_run_through_the_workers(pg, workers, make_spec, engine_python, runs):
    from prefect.blocks.system import Secret

    # The key's Secret block lives on this server, like everything the flows read.
    with pg.settings():
        Secret(value=TEST_KEY).save(SECRET, overwrite=True)
    spec = make_spec(NAME, port=free_port()).model_dump(mode="json", exclude_unset=True)
    spec["access"]["api_key_secret"] = SECRET
    run = cli(pg, "deployment", "run", "provision/local-tiny", "--params", json.dumps({"spec": spec}),
              "--watch", "--watch-timeout", "400", timeout=450)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + f" (worker logs: {workers})"
    runs.append(re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1))
    state = load_state(NAME)
    assert state is not None and process.session_members(state.engine["pgid"])
    r = httpx.get(f"http://127.0.0.1:{spec['access']['port']}/v1/models", trust_env=False, timeout=10,
                  headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"

    run = cli(pg, "deployment", "run", "teardown/local-tiny", "--param", f"name={NAME}",
              "--watch", "--watch-timeout", "180", timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    runs.append(re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1))
    assert load_state(NAME) is None
    assert not process.session_members(state.engine["pgid"]), "the engine outlived its teardown"


def test_runs_created_together_complete_on_both_workers(pg, workers, runs):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def create(client):
        deployment = client.read_deployment_by_name("teardown/local-tiny")
        return [client.create_flow_run_from_deployment(deployment.id, parameters={"name": f"ghost-{i}"}).id
                for i in range(4)]

    ids = _read(pg, create)
    runs.extend(str(i) for i in ids)
    deadline = time.monotonic() + 300
    while True:
        found = _read(pg, lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))))
        if all(fr.state and fr.state.is_final() for fr in found) and len(found) == len(ids):
            break
        assert time.monotonic() < deadline, [(fr.name, fr.state_name) for fr in found]
        time.sleep(1)
    assert all(fr.state.is_completed() for fr in found), [(fr.name, fr.state.message) for fr in found]
    # Each worker labels the runs it submits with its name.
    assert {fr.labels.get("prefect.worker.name") for fr in found} == set(WORKERS)


def test_the_flow_runs_are_rows_in_postgres(pg, runs):
    import asyncpg

    assert pg.database_url.startswith("postgresql+asyncpg://")

    async def query():
        conn = await asyncpg.connect(pg.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await conn.fetch(
                "SELECT id::text AS id, state_type::text AS state, labels->>'prefect.worker.name' AS worker "
                "FROM flow_run WHERE id = ANY($1::uuid[])", runs)
        finally:
            await conn.close()

    rows = asyncio.run(query())
    assert len(runs) == 6 and {r["id"] for r in rows} == set(runs)
    assert {r["state"] for r in rows} == {"COMPLETED"}
    assert {r["worker"] for r in rows} == set(WORKERS)
