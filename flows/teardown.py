"""teardown: remove a deployment; safe to run twice."""

from __future__ import annotations

from prefect import flow, get_run_logger

from servenest.errors import SpecError
from servenest.spec import load_spec_data
from servenest.state import DeploymentState, delete_state, load_state
from servenest.topology import TOPOLOGIES, open_topology
from tasks.infrastructure import teardown_deployment
from tasks.registry import find_endpoint, forget_endpoint
from tasks.shell import prefect_shell_runner


@flow(name="teardown", flow_run_name="teardown-{name}")
def teardown(name: str) -> dict:
    """Stop and remove everything deployment ``name`` created.

    Args:
        name: Deployment name.
    """
    logger = get_run_logger()
    block = find_endpoint(name)
    # The local state record is written as resources appear; it outlives a run that died
    # before registering, so it is the first place to look.
    state = load_state(name) or (DeploymentState.from_dict(block.state) if block else None)
    spec_data = (state.spec if state and state.spec else None) or (block.spec if block else None)
    if spec_data is None:
        logger.info("nothing is registered or recorded as %s; nothing to tear down", name)
        return {"deployment": name, "torn_down": False}
    try:
        spec = load_spec_data(spec_data, origin=f"recorded spec of {name}")
    except SpecError as exc:
        if state is None:
            raise
        logger.warning("%s; tearing down from the state record alone", exc)
        result = TOPOLOGIES[state.topology].teardown_recorded(state)
        delete_state(name)
    else:
        result = teardown_deployment(open_topology(spec, state, run=prefect_shell_runner))
    forget_endpoint(name)
    return {"deployment": name, "torn_down": True, **result}
