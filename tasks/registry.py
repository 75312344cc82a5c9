"""The endpoint registry: one ServeNestEndpoint block per deployment name."""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.endpoint import ServeNestEndpoint
from servenest.errors import NotRegisteredError
from servenest.health import GateReport
from servenest.spec import DeploymentSpec, load_spec_data
from servenest.state import DeploymentState, load_state
from servenest.topology import Topology


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
    state = load_state(name) or DeploymentState.from_dict(block.state)
    return block, load_spec_data(block.spec, origin=f"registered spec of {name}"), state


@task(name="register-endpoint", cache_policy=NO_CACHE)
def register_endpoint(topology: Topology, gate: GateReport) -> ServeNestEndpoint:
    ep = topology.endpoint()
    spec = topology.spec
    block = ServeNestEndpoint(
        deployment=spec.name, topology=spec.topology, base_url=ep.base_url,
        served_model_name=ep.served_model_name, api_key_secret=spec.access.api_key_secret,
        spec=spec.model_dump(mode="json"), state=topology.state.to_dict(),
        registered_at=time.time(), last_gate=_gate_record(gate),
    )
    block.save(spec.name, overwrite=True)
    return block


@task(name="record-gate", cache_policy=NO_CACHE)
def record_gate(name: str, gate: GateReport) -> None:
    block = find_endpoint(name)
    if block is not None:
        block.last_gate = _gate_record(gate)
        block.save(name, overwrite=True)


@task(name="forget-endpoint", cache_policy=NO_CACHE)
def forget_endpoint(name: str) -> bool:
    if find_endpoint(name) is None:
        return False
    ServeNestEndpoint.delete(name)
    return True


def _gate_record(gate: GateReport) -> dict:
    return {"passed": gate.passed, "at": gate.passed_at or time.time(),
            "stages": [asdict(s) for s in gate.stages], "ttft_ms": gate.ttft_ms}


@task(name="owned-deployments", cache_policy=NO_CACHE)
def owned_deployments() -> set[str]:
    """Deployments something still owns: registered, recorded on this machine, or with a
    provision run in flight (possibly on another worker, before it recorded anything)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from servenest.state import recorded_deployments
    from servenest.status import registered_deployments

    owned = set(registered_deployments()) | set(recorded_deployments())
    active = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.RUNNING, StateType.PENDING, StateType.PAUSED, StateType.SCHEDULED])))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=active, limit=200):
            for prefix in ("provision-", "redeploy-", "launch-"):
                if run.name.startswith(prefix):
                    owned.add(run.name.removeprefix(prefix))
    return owned
