"""teardown: remove a deployment (both of its slots); safe to run twice."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.endpoint import ServeNestEndpoint
from servenest.errors import SpecError
from servenest.slots import slot_names
from servenest.spec import load_spec_data
from servenest.state import DeploymentState, delete_state, load_state
from servenest.topology import TOPOLOGIES, open_topology
from tasks.infrastructure import teardown_deployment
from tasks.registry import find_endpoint, forget_endpoint, runs_in_flight
from tasks.shell import prefect_shell_runner


@flow(name="teardown", flow_run_name="teardown-{name}")
def teardown(name: str, failed_run_id: str | None = None) -> dict:
    """Stop and remove everything deployment ``name`` created, in either slot.

    Args:
        name: Deployment name.
        failed_run_id: Set by the clean-up automation to the provision or redeploy run that
            ended Failed, Crashed or Cancelled: then only what that run left behind goes
            (and the deployment is the one that run's spec names).
            The live registered copy stays (unless that run was a provision that registered
            it), and nothing goes when the run asked to keep a failed bring-up.
    """
    logger = get_run_logger()
    failed = failed_run(failed_run_id) if failed_run_id else None
    if failed and failed["deployment"] and failed["deployment"] != name:
        # provision/<name> may have been run with another spec: clean up after that one.
        logger.info("run %s brought up %s; cleaning up after it", failed_run_id, failed["deployment"])
        name = failed["deployment"]
    block = find_endpoint(name)
    keep = None
    if failed:
        if failed["keep_on_failure"]:
            logger.info("run %s asked to keep its failed bring-up; leaving %s alone", failed_run_id, name)
            return {"deployment": name, "torn_down": False, "kept": "keep_on_failure"}
        busy = runs_in_flight(name, exclude=failed_run_id)
        if busy:
            # Their slots are theirs; a run that fails later gets its own clean-up.
            logger.warning("%s is being changed by %s; leaving it to them", name, ", ".join(busy))
            return {"deployment": name, "torn_down": False, "kept": "runs in flight"}
        if block is not None and not (failed["flow"] == "provision" and block.registered_by == failed_run_id):
            keep = block.instance_name
            logger.info("%s serves from %s, registered by another run; it stays", name, keep)
    removed = {}
    for instance in slot_names(name):
        if instance != keep:
            result = _teardown_instance(instance, block)
            if result is not None:
                removed[instance] = result
    if keep is None:
        forget_endpoint(name)
    if not removed:
        logger.info("nothing of %s is recorded%s; nothing to tear down", name,
                    f" beside the live {keep}" if keep else "")
    return {"deployment": name, "torn_down": bool(removed), "instances": removed, "kept": keep}


@task(name="read-failed-run", cache_policy=NO_CACHE)
def failed_run(flow_run_id: str) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        flow_name = client.read_flow(run.flow_id).name
    spec = run.parameters.get("spec")
    return {"flow": flow_name, "keep_on_failure": bool(run.parameters.get("keep_on_failure")),
            "deployment": spec.get("name") if isinstance(spec, dict) else None,
            "state": run.state.type.value if run.state else None}


def _teardown_instance(instance: str, block: ServeNestEndpoint | None) -> dict | None:
    """Remove slot ``instance``. Its state record is the first place to look (written as
    resources appear, it outlives a run that died before registering); then the registered
    block. A slot with neither is looked for by name from the registered spec: the record
    of a redeploy's leftover copy may be on another worker's machine."""
    live = block if block and block.instance_name == instance else None
    state = load_state(instance) or (DeploymentState.from_dict(live.state) if live else None)
    spec_data = (state.spec if state and state.spec else None) or (live.spec if live else None)
    if spec_data is None and block is not None:
        try:
            spec = load_spec_data({**block.spec, "name": instance}, origin=f"slot {instance}")
        except SpecError:
            return None  # a name the topology refuses: that slot was never used
        return teardown_deployment(open_topology(spec, DeploymentState(instance, spec.topology),
                                                 run=prefect_shell_runner))
    if spec_data is None:
        return None
    try:
        spec = load_spec_data(spec_data, origin=f"recorded spec of {instance}")
    except SpecError as exc:
        if state is None:
            raise
        get_run_logger().warning("%s; tearing down from the state record alone", exc)
        result = TOPOLOGIES[state.topology].teardown_recorded(state)
        delete_state(instance)
        return result
    return teardown_deployment(open_topology(spec, state, run=prefect_shell_runner))
