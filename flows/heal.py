"""heal: mend a registered endpoint that the watch found down, one rung at a time.

Restart the engine where it runs, then relaunch it through ``launch``, then reprovision
through ``provision`` (at most ``heal.max_reprovisions_per_day`` per 24 h); every rung
ends with the staged gate, and only a passing gate re-registers the endpoint and refreshes
its connection card. Past the last rung the deployment is marked failed, an event fires,
and it is kept or torn down as ``heal.on_give_up`` says. The heal automation
(deployments/automations/heal-on-down.yaml) runs ``heal/<name>`` on the watch's ``down``
event; running it by hand does the same.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import SecretStr

from flows.common import register
from flows.launch import launch
from flows.provision import provision
from flows.teardown import teardown
from flows.watch import BUSY_FLOWS
from servenest.errors import HealFailedError
from servenest.events import ENDPOINT_FAILED, ENDPOINT_HEALED
from servenest.heal import RELAUNCH, REPROVISION, RESTART, Rung, climb, plan
from servenest.timing import StageTimer
from servenest.topology import TOPOLOGIES, Topology, open_topology
from servenest.watch import DOWN, History
from tasks.artifacts import artifact_key
from tasks.engine import restart_engine
from tasks.gate import gate_endpoint, publish_diagnostics
from tasks.infrastructure import teardown_deployment
from tasks.registry import find_endpoint, forget_endpoint, registered, runs_in_flight
from tasks.secrets import load_api_key
from tasks.shell import prefect_shell_runner
from tasks.watch import (
    emit_endpoint_event,
    load_history,
    probe_endpoint,
    publish_watch,
    save_history,
)


@flow(name="heal", flow_run_name="heal-{name}")
def heal(name: str) -> dict:
    """Bring the registered endpoint ``name`` back if it is down; fail when it cannot be.

    Args:
        name: Registered deployment name.
    """
    logger = get_run_logger()
    own = flow_run.get_id()

    def others() -> str | None:
        return ", ".join(runs_in_flight(name, exclude=own, flows=BUSY_FLOWS)) or None

    busy = others()
    if busy:
        # A redeploy, launch or provision in flight wins; nothing heals a teardown.
        logger.info("%s is being changed by %s; leaving it to them", name, busy)
        return {"deployment": name, "healed": False, "skipped": busy}
    if find_endpoint(name) is None:
        logger.info("no endpoint is registered as %s; nothing to heal", name)
        return {"deployment": name, "healed": False, "skipped": "not registered"}
    block, spec, state = registered(name)
    topology = open_topology(spec, state, run=prefect_shell_runner)
    history = load_history(name)
    check = probe_endpoint(topology, block, history.last_check)
    if check.outcome != DOWN:
        logger.info("%s is %s now; nothing to heal", name, check.outcome)
        return {"deployment": name, "healed": False, "needed": False, "outcome": check.outcome}

    api_key = load_api_key(spec.access.api_key_secret)
    timer = StageTimer()
    per_day = spec.heal.max_reprovisions_per_day
    rungs = plan(check.gone, history.reprovisions_left(per_day, time.time()), per_day)
    actions = {
        RESTART: lambda: _restart(name, topology, api_key, timer),
        RELAUNCH: lambda: launch(name, engine={}),
        REPROVISION: lambda: _reprovision(name, topology, history),
    }

    def on_rung(rung: Rung) -> None:
        logger.log(30 if rung.outcome != "healed" else 20, "rung %s: %s (%s)", rung.name, rung.outcome, rung.detail)

    result = climb(rungs, actions, others, on_rung)
    create_table_artifact(result.table() or [{"rung": "-", "outcome": "stopped"}], key=artifact_key("heal", name),
                          description=f"The last heal of {name}, rung by rung")
    out = {"deployment": name, "healed": result.healed, "healed_by": result.healed_by,
           "rungs": result.table(), "down": check.reasons}
    if result.stopped:
        logger.warning("%s: %s started meanwhile; it wins, the heal stops", name, result.stopped)
        return {**out, "stopped": result.stopped}
    history = load_history(name)  # the reprovision rung counted itself there
    if result.healed:
        block, spec, state = registered(name)
        after = probe_endpoint(open_topology(spec, state), block, history.last_check)
        history.record(after)
        save_history(name, history)
        publish_watch(name, history)
        emit_endpoint_event(name, ENDPOINT_HEALED, {"healed_by": result.healed_by, "rungs": result.table(),
                                                    "down": check.reasons})
        return out
    reason = result.give_up_reason()
    history.failed = {"at": time.time(), "reason": reason}
    save_history(name, history)
    publish_watch(name, history)
    emit_endpoint_event(name, ENDPOINT_FAILED, {"rungs": result.table(), "down": check.reasons,
                                                "on_give_up": spec.heal.on_give_up})
    if spec.heal.on_give_up == "teardown":
        teardown(name)
    raise HealFailedError(
        f"{name} is down and could not be healed ({reason}); marked failed"
        + ("; torn down as heal.on_give_up says" if spec.heal.on_give_up == "teardown" else
           f"; kept for a person to look at (`servenest down {name}` removes it)"))


def _restart(name: str, topology: Topology, api_key: SecretStr, timer: StageTimer) -> None:
    with timer.stage("restart"):
        restart_engine(topology, api_key)
    with timer.stage("gate"):
        try:
            report = gate_endpoint(topology, api_key, just_launched=False)
        except Exception:
            publish_diagnostics(topology)
            raise
    register(topology, api_key, report, timer, name)


def _reprovision(name: str, topology: Topology, history: History) -> None:
    # Counted before anything is created: a heal that dies half-way still used its try.
    history.reprovisions.append(time.time())
    save_history(name, history)
    # Never a second stack: the broken copy goes before the new one is provisioned.
    teardown_deployment(topology)
    forget_endpoint(name)
    spec = topology.spec
    if spec.name != name:  # it served from the second slot; provision brings up the first
        spec = TOPOLOGIES[spec.topology].spec_for_slot(spec, name)
    provision(spec)
