"""The endpoint registry: one ServeNestEndpoint block per deployment name."""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.endpoint import ServeNestEndpoint
from servenest.errors import NotRegisteredError
from servenest.health import GateReport
from servenest.slots import deployment_of, slot_names
from servenest.spec import DeploymentSpec, load_spec_data
from servenest.state import DeploymentState, load_state
from servenest.topology import Estimate, Topology


def find_endpoint(name: str) -> ServeNestEndpoint | None:
    try:
        return ServeNestEndpoint.load(name)
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            return None
        raise


def registered(name: str) -> tuple[ServeNestEndpoint, DeploymentSpec, DeploymentState]:
    block = find_endpoint(name)
    if block is None:
        raise NotRegisteredError(
            f"no endpoint is registered as {name!r}; `servenest status` lists the live ones"
        )
    # The state file is written as things happen; the block only at registration, so a
    # relaunch kept on failure (or interrupted) is known to the file, not the block.
    state = load_state(block.instance_name) or DeploymentState.from_dict(block.state)
    return block, load_spec_data(block.spec, origin=f"registered spec of {name}"), state


@task(name="register-endpoint", cache_policy=NO_CACHE)
def register_endpoint(
    topology: Topology, gate: GateReport, deployment: str | None = None,
    estimate: Estimate | None = None,
) -> ServeNestEndpoint:
    """Point deployment ``deployment`` (default: the spec's name) at ``topology``'s endpoint:
    from here on, clients and later flows use it."""
    from prefect.runtime import flow_run

    ep = topology.endpoint()
    spec = topology.spec
    deployment = deployment or spec.name
    previous = find_endpoint(deployment)
    # A relaunch of the same copy keeps its price and its age (status counts cost from there).
    same_copy = previous is not None and previous.instance_name == spec.name
    if estimate is not None:
        hourly_cost, currency = estimate.hourly, estimate.currency
    else:
        hourly_cost, currency = (previous.hourly_cost, previous.currency) if same_copy else (None, None)
    block = ServeNestEndpoint(
        deployment=deployment, topology=spec.topology, base_url=ep.base_url,
        served_model_name=ep.served_model_name, api_key_secret=spec.access.api_key_secret,
        spec=spec.model_dump(mode="json"), state=topology.state.to_dict(),
        registered_at=previous.registered_at if same_copy else time.time(),
        last_gate=_gate_record(gate), instance=spec.name,
        registered_by=flow_run.get_id(), hourly_cost=hourly_cost, currency=currency,
        last_benchmark=previous.last_benchmark if previous else {},
    )
    block.save(deployment, overwrite=True)
    return block


@task(name="record-gate", cache_policy=NO_CACHE)
def record_gate(name: str, gate: GateReport) -> None:
    block = find_endpoint(name)
    if block is not None:
        block.last_gate = _gate_record(gate)
        block.save(name, overwrite=True)


@task(name="record-benchmark", cache_policy=NO_CACHE)
def record_benchmark(name: str, summary: dict) -> None:
    block = find_endpoint(name)
    if block is not None:
        block.last_benchmark = summary
        block.save(name, overwrite=True)


@task(name="forget-endpoint", cache_policy=NO_CACHE)
def forget_endpoint(name: str) -> bool:
    if find_endpoint(name) is None:
        return False
    ServeNestEndpoint.delete(name)
    return True


@task(name="forget-instance", cache_policy=NO_CACHE)
def forget_instance(instance: str) -> bool:
    """Unregister whichever deployment points at ``instance`` (a slot), and only that one:
    cleaning up a failed second copy must leave the live registration alone."""
    for name in {instance, deployment_of(instance)}:
        block = find_endpoint(name)
        if block is not None and block.instance_name == instance:
            ServeNestEndpoint.delete(name)
            return True
    return False


def _gate_record(gate: GateReport) -> dict:
    return {"passed": gate.passed, "at": gate.passed_at or time.time(),
            "stages": [asdict(s) for s in gate.stages], "ttft_ms": gate.ttft_ms}


# Flows that change a deployment name their runs "<flow>-<deployment>".
CHANGING_FLOWS = ("provision", "redeploy", "launch", "heal")


def changing_runs(names: list[str] | None = None, queued: bool = True,
                  flows: tuple[str, ...] = CHANGING_FLOWS) -> list:
    """Runs of the flows that change deployments (or of ``flows``), not yet ended (with
    ``queued``, also scheduled ones); only those named in ``names`` when given."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    states = [StateType.RUNNING, StateType.PENDING, StateType.PAUSED]
    active = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=states + ([StateType.SCHEDULED] if queued else []))),
        name=FlowRunFilterName(any_=names) if names else None)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=active, limit=200)
    return [r for r in runs if r.name.split("-", 1)[0] in flows]


@task(name="owned-deployments", cache_policy=NO_CACHE)
def owned_deployments() -> set[str]:
    """Deployments something still owns: registered, recorded on this machine, or with a
    provision run in flight (possibly on another worker, before it recorded anything)."""
    from servenest.state import recorded_deployments
    from servenest.status import registered_deployments

    owned = set(registered_deployments()) | set(recorded_deployments())
    owned |= {run.name.split("-", 1)[1] for run in changing_runs()}
    # Either slot of a deployment belongs to it (a redeploy may be bringing up the other).
    return {slot for name in owned for slot in slot_names(name)}


@task(name="runs-in-flight", cache_policy=NO_CACHE)
def runs_in_flight(name: str, exclude: str | None, flows: tuple[str, ...] = CHANGING_FLOWS) -> list[str]:
    """Provision, redeploy, launch or heal runs of ``name`` (or of ``flows``) that are
    running now (not queued)."""
    runs = changing_runs([f"{flow}-{name}" for flow in flows], queued=False, flows=flows)
    return [f"{r.name} ({r.id})" for r in runs if str(r.id) != exclude]
