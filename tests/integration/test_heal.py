"""Watch and heal on the local topology with the real vLLM engine: its process group is
killed, the watch finds it down, heal's first rung brings it back, the gate passes."""

from __future__ import annotations

import os
import signal

import pytest

from blocks.endpoint import ServeNestEndpoint
from flows.heal import heal
from flows.provision import provision
from flows.teardown import teardown
from flows.watch import watch
from servenest import process
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
