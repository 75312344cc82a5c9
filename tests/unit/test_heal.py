"""servenest/heal.py: the order of the rungs, when one is skipped, and when the ladder stops."""

from __future__ import annotations

import pytest

from servenest.errors import GateFailedError
from servenest.heal import FAILED, HEALED, RELAUNCH, REPROVISION, RESTART, SKIPPED, climb, plan


class Engine:
    """A deployment whose engine is down until ``fixes_at`` is reached: each rung's action
    does its part and then 'gates' (raises unless the engine serves)."""

    def __init__(self, fixes_at: str | None):
        self.fixes_at = fixes_at
        self.serving = False
        self.done: list[str] = []

    def action(self, rung: str):
        def run() -> None:
            self.done.append(rung)
            if rung == self.fixes_at:
                self.serving = True
            if not self.serving:
                raise GateFailedError(f"health gate failed at '/health 200' after {rung}\nlog lines")
        return run

    def actions(self) -> dict:
        return {r: self.action(r) for r in (RESTART, RELAUNCH, REPROVISION)}


def test_the_rungs_go_restart_relaunch_reprovision():
    assert plan(False, 2, 2) == [(RESTART, None), (RELAUNCH, None), (REPROVISION, None)]


def test_gone_machines_skip_to_reprovision_and_no_budget_skips_it():
    (restart, relaunch, reprovision) = plan(True, 0, 2)
    assert restart[1] and relaunch[1] and "gone" in restart[1]
    assert reprovision[1] == "reprovision limit reached (2 per 24 h)"


@pytest.mark.parametrize("fixes_at", [RESTART, RELAUNCH, REPROVISION])
def test_each_rung_runs_only_after_the_one_below_failed(fixes_at):
    engine = Engine(fixes_at)
    result = climb(plan(False, 1, 2), engine.actions())
    assert result.healed and result.healed_by == fixes_at
    ladder = [RESTART, RELAUNCH, REPROVISION]
    assert engine.done == ladder[:ladder.index(fixes_at) + 1]
    assert [r.outcome for r in result.rungs] == [FAILED] * ladder.index(fixes_at) + [HEALED]
    assert all("health gate failed" in r.detail and "\n" not in r.detail
               for r in result.rungs if r.outcome == FAILED)


def test_every_rung_failing_gives_up_with_each_reason():
    engine = Engine(None)
    result = climb(plan(False, 1, 2), engine.actions())
    assert not result.healed and result.stopped is None
    assert engine.done == [RESTART, RELAUNCH, REPROVISION]
    assert result.give_up_reason().startswith("restart: failed (GateFailedError: health gate failed")


def test_skipped_rungs_are_recorded_and_not_run():
    engine = Engine(REPROVISION)
    seen = []
    result = climb(plan(True, 1, 2), engine.actions(), on_rung=seen.append)
    assert engine.done == [REPROVISION] and result.healed_by == REPROVISION
    assert [r.outcome for r in seen] == [SKIPPED, SKIPPED, HEALED]
    engine = Engine(REPROVISION)
    result = climb(plan(True, 0, 2), engine.actions())
    assert engine.done == [] and not result.healed
    assert "reprovision: skipped (reprovision limit reached" in result.give_up_reason()


def test_a_redeploy_in_flight_stops_the_ladder_before_its_next_rung():
    engine = Engine(None)
    busy = iter([None, "redeploy-qwen3-8b (1234)"])
    result = climb(plan(False, 2, 2), engine.actions(), interrupted=lambda: next(busy))
    assert engine.done == [RESTART]
    assert result.stopped == "redeploy-qwen3-8b (1234)" and not result.healed


def test_cancellation_is_not_a_failed_rung():
    def cancelled() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        climb(plan(False, 2, 2), {RESTART: cancelled})
