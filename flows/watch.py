"""watch: one cheap, bounded pass over a registered endpoint, on a schedule."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from servenest.events import ENDPOINT_EVENT_PREFIX
from servenest.topology import open_topology
from tasks.registry import find_endpoint, registered, runs_in_flight
from tasks.watch import (
    check_payload,
    emit_endpoint_event,
    load_history,
    probe_endpoint,
    publish_watch,
    save_history,
)

# Runs that change a deployment, and teardown: the watch looks away while they work.
BUSY_FLOWS = ("provision", "redeploy", "launch", "heal", "teardown")


@flow(name="watch", flow_run_name="watch-{name}")
def watch(name: str) -> dict:
    """Check the registered endpoint ``name`` once and emit servenest.endpoint.<outcome>.

    Args:
        name: Registered deployment name.
    """
    logger = get_run_logger()
    busy = runs_in_flight(name, exclude=flow_run.get_id(), flows=BUSY_FLOWS)
    if busy:
        logger.info("%s is being changed by %s; not watching it now", name, ", ".join(busy))
        return {"deployment": name, "skipped": busy}
    if find_endpoint(name) is None:
        logger.info("no endpoint is registered as %s; nothing to watch", name)
        return {"deployment": name, "skipped": "not registered"}
    block, spec, state = registered(name)
    topology = open_topology(spec, state)
    history = load_history(name)
    check = probe_endpoint(topology, block, history.last_check)
    history.record(check)
    save_history(name, history)
    payload = check_payload(check)
    event_id = emit_endpoint_event(name, ENDPOINT_EVENT_PREFIX + check.outcome, payload)
    publish_watch(name, history)
    return {"deployment": name, "event": ENDPOINT_EVENT_PREFIX + check.outcome, "event_id": event_id, **payload}
