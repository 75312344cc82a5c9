"""The heal ladder: which rungs to try, in which order, and when to stop.

Rungs, each only after the one below failed: restart the engine where it runs (process,
container, pods), relaunch it through the ``launch`` flow, reprovision through
``provision`` (with its failover). Each rung ends with the staged gate, and raises when the
gate does not pass. A reprovision is allowed ``heal.max_reprovisions_per_day`` times per
24 h; beyond that the ladder gives up and the deployment is marked failed.

The flow (``flows/heal.py``) supplies the rungs as callables and ``interrupted``, which names
the runs that now change the deployment (a redeploy or teardown in flight wins: the ladder
stops before its next rung). Everything here is plain Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

RESTART, RELAUNCH, REPROVISION = "restart", "relaunch", "reprovision"
LADDER = (RESTART, RELAUNCH, REPROVISION)
HEALED, FAILED, SKIPPED = "healed", "failed", "skipped"


@dataclass
class Rung:
    name: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class LadderResult:
    rungs: list[Rung] = field(default_factory=list)
    stopped: str | None = None  # why the ladder stopped before healing (another run wins)

    @property
    def healed(self) -> bool:
        return bool(self.rungs) and self.rungs[-1].outcome == HEALED

    @property
    def healed_by(self) -> str | None:
        return self.rungs[-1].name if self.healed else None

    def give_up_reason(self) -> str:
        return "; ".join(f"{r.name}: {r.outcome} ({r.detail})" for r in self.rungs)

    def table(self) -> list[dict]:
        return [asdict(r) for r in self.rungs]


def plan(machines_gone: bool, reprovisions_left: int, per_day: int) -> list[tuple[str, str | None]]:
    """The rungs in order, each with the reason it is skipped (None: try it)."""
    gone = "the machines are gone; only a reprovision can help" if machines_gone else None
    budget = None if reprovisions_left > 0 else (
        f"reprovision limit reached ({per_day} per 24 h)")
    return [(RESTART, gone), (RELAUNCH, gone), (REPROVISION, budget)]


def climb(
    rungs: list[tuple[str, str | None]], actions: dict[str, Callable[[], object]],
    interrupted: Callable[[], str | None] = lambda: None,
    on_rung: Callable[[Rung], None] = lambda rung: None,
) -> LadderResult:
    """Try each rung until one heals. A rung heals when its action returns (it ends with a
    passing gate) and fails when it raises an Exception; cancellation (BaseException)
    propagates. Before each rung that will run, ``interrupted()`` may stop the ladder."""
    result = LadderResult()
    for name, skip in rungs:
        if skip:
            result.rungs.append(rung := Rung(name, SKIPPED, skip))
            on_rung(rung)
            continue
        other = interrupted()
        if other:
            result.stopped = other
            return result
        started = time.monotonic()
        try:
            actions[name]()
        except Exception as exc:  # noqa: BLE001 - a failed rung is why the next one exists
            rung = Rung(name, FAILED, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        round(time.monotonic() - started, 2))
            result.rungs.append(rung)
            on_rung(rung)
            continue
        result.rungs.append(rung := Rung(name, HEALED, "gate passed", round(time.monotonic() - started, 2)))
        on_rung(rung)
        return result
    return result
