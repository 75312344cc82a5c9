"""Watch and heal on the local topology with the real vLLM engine: its process group is
killed, the watch finds it down, heal's first rung brings it back, the gate passes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from blocks.endpoint import ServeNestEndpoint
from flows.heal import heal
from flows.provision import provision
from flows.teardown import teardown
from flows.watch import watch
from servenest import process
from servenest.errors import HealFailedError
from servenest.state import load_state
from tasks.watch import load_history

pytestmark = pytest.mark.engine


def test_a_killed_engine_is_found_down_and_healed_by_a_restart(make_spec):
    spec = make_spec("it-heal")
    name = spec.name
    provision(spec)
    try:
        assert watch(name)["event"] == "servenest.endpoint.healthy"
        before = ServeNestEndpoint.load(name)
        pgid = load_state(name).engine["pgid"]
        os.killpg(pgid, signal.SIGKILL)
        process.wait_port_free("127.0.0.1", spec.access.port, timeout_s=20)

        found = watch(name)
        assert found["event"] == "servenest.endpoint.down"
        assert "exited" in found["reasons"][0]
        healed = heal(name)
        assert healed["healed"] and healed["healed_by"] == "restart", healed["rungs"]

        after = ServeNestEndpoint.load(name)
        assert after.last_gate["passed"] and after.last_gate["at"] > before.last_gate["at"]
        assert after.registered_at == before.registered_at  # the same copy, relaunched
        state = load_state(name)
        assert state.engine["pgid"] != pgid and process.session_members(state.engine["pgid"])
        history = load_history(name)
        assert history.last["outcome"] == "healthy"
        assert history.incidents[-1]["end"] is not None  # the incident closed
        # Healthy again: a heal run by hand does nothing.
        assert heal(name)["needed"] is False
    finally:
        teardown(name)
    assert load_state(name) is None


def _engine_pid(emu, instance_id: str) -> int:
    """The engine process inside the emulated container (a child of its supervisor)."""
    state = _container(emu, instance_id)
    children = Path(f"/proc/{state['pid']}/task/{state['pid']}/children").read_text().split()
    return int(children[0])


def _container(emu, instance_id: str) -> dict:
    [path] = emu.hosts.sandbox(instance_id).rglob("containers/vllm.json")
    return json.loads(path.read_text())


def _serving(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ecs_restart_policy_then_each_rung_then_bounded_give_up(api_key_secret, tmp_path):
    from servenest.rehearsal.ecs import emulated_cloud
    from tests.integration.test_ecs_rehearsal import ecs_spec

    spec = ecs_spec("it-heal-ecs", api_key_secret, health={"deadline_s": 20}, watch={"timeout_s": 5},
                    heal={"max_reprovisions_per_day": 2, "on_give_up": "teardown"})
    name = spec.name
    with emulated_cloud(engine="noop", root=tmp_path / "hosts") as emu:
        url = provision(spec)["base_url"]
        [iid] = list(emu.instances)

        # The engine exits: docker's restart policy brings it back; the watch notes it, no rung.
        os.kill(_engine_pid(emu, iid), signal.SIGKILL)
        _wait(lambda: _restarts(emu, iid) == 1 and _serving(url), 30, "the restart")
        found = watch(name)
        assert found["event"] == "servenest.endpoint.degraded", found
        assert "restarted by its runtime" in found["reasons"][0] and found["restarts"] == 1
        assert watch(name)["event"] == "servenest.endpoint.healthy"  # no new restart since

        # The engine hangs (alive, answering nothing): the first rung restarts its container.
        os.kill(_engine_pid(emu, iid), signal.SIGSTOP)
        assert watch(name)["event"] == "servenest.endpoint.down"
        healed = heal(name)
        assert healed["healed_by"] == "restart", healed["rungs"]
        assert _serving(url) and list(emu.instances) == [iid]

        # The container is gone: restarting it fails, the launch flow runs a new one.
        emu.hosts.run("docker rm -f vllm", iid)
        assert watch(name)["event"] == "servenest.endpoint.down"
        healed = heal(name)
        assert [r["outcome"] for r in healed["rungs"]] == ["failed", "healed"], healed["rungs"]
        assert healed["rungs"][0]["name"] == "restart" and healed["rungs"][1]["name"] == "relaunch"

        # The instance is released: only a reprovision helps; the old stack goes first.
        for _ in (1, 2):
            emu.faults.update({"out_of_stock_zones": [emu.instances[iid]["zone"]]})  # failover
            emu.release_instance(iid)
            found = watch(name)
            assert found["event"] == "servenest.endpoint.down" and found["gone"]
            healed = heal(name)
            assert [r["outcome"] for r in healed["rungs"]] == ["skipped", "skipped", "healed"], healed
            [iid] = list(emu.instances)
            assert len(live_stacks(emu)) == 1, "a heal must never leave a second stack"
            url = ServeNestEndpoint.load(name).base_url
            assert _serving(url) and watch(name)["event"] == "servenest.endpoint.healthy"
            emu.faults.update({"out_of_stock_zones": []})
        assert load_history(name).reprovisions_left(2, time.time()) == 0

        # A third failure within 24 h: no reprovision left; marked failed and torn down.
        emu.release_instance(iid)
        with pytest.raises(HealFailedError, match="reprovision limit reached"):
            heal(name)
        history = load_history(name)
        assert history.failed and "reprovision limit reached (2 per 24 h)" in history.failed["reason"]
        assert live_stacks(emu) == [] and not emu.instances
        assert load_state(name) is None
        with pytest.raises(ValueError, match="Unable to find block document"):
            ServeNestEndpoint.load(name)
    wanted = {"servenest.endpoint.failed", "servenest.endpoint.healed", "servenest.endpoint.down",
              "servenest.endpoint.degraded"}
    _wait(lambda: wanted <= _events(f"servenest.endpoint.{name}"), 30, f"the events {wanted}")


def _restarts(emu, instance_id: str) -> int:
    found = list(emu.hosts.sandbox(instance_id).rglob("containers/vllm.exit.restarts"))
    return int(found[0].read_text()) if found else 0


def live_stacks(emu) -> list:
    return [s for s in emu.stacks.values() if s.status != "DELETE_COMPLETE"]


def _events(resource_id: str) -> set[str]:
    """The event names the server stored about ``resource_id`` (its REST API)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from tests.integration.servers import drain_client_workers

    drain_client_workers()
    auth = PREFECT_API_AUTH_STRING.value()
    r = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", trust_env=False, timeout=30,
                   auth=tuple(auth.split(":", 1)) if auth else None,
                   json={"filter": {"resource": {"id": [resource_id]}}, "limit": 50})
    r.raise_for_status()
    return {e["event"] for e in r.json()["events"]}


def test_an_ack_pod_crash_loop_is_down_until_the_deployments_own_restart(api_key_secret, tmp_path):
    from servenest.rehearsal.ack import emulated_ack
    from tests.integration.test_ack_rehearsal import ack_spec

    with emulated_ack(tmp_path / "ack") as (_cloud, cluster_id, _kube, controller):
        spec = ack_spec("it-heal-ack", api_key_secret, cluster_id, watch={"timeout_s": 5})
        name = spec.name
        provision(spec)
        try:
            assert watch(name)["event"] == "servenest.endpoint.healthy"
            controller.crash_loop = {f"{name}-"}
            found = _wait(lambda: (w := watch(name))["event"] == "servenest.endpoint.down" and w, 30,
                          "the watch to see the crash loop")
            assert "CrashLoopBackOff" in found["reasons"][0] and found["restarts"] >= 1
            # The server stores events in batches: allow it a few seconds.
            _wait(lambda: "servenest.endpoint.down" in _events(f"servenest.endpoint.{name}"), 30,
                  "the down event in the server's event store")
            # The kubelet goes on restarting the container; once it stays up, it serves again.
            controller.crash_loop = set()
            back = _wait(lambda: (w := watch(name))["event"] != "servenest.endpoint.down" and w, 30,
                         "the pod to serve again")
            assert back["event"] in ("servenest.endpoint.healthy", "servenest.endpoint.degraded"), back
        finally:
            teardown(name)
