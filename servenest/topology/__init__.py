"""Topology implementations, looked up by the spec's ``topology`` field."""

from __future__ import annotations

from servenest.commands import CommandRunner, subprocess_runner
from servenest.errors import TopologyNotAvailableError
from servenest.spec import DeploymentSpec
from servenest.state import DeploymentState
from servenest.topology.ack import AckTopology
from servenest.topology.base import (
    Endpoint,
    EngineStatus,
    Estimate,
    RuntimeState,
    StagedWeights,
    Topology,
)
from servenest.topology.ecs import EcsTopology
from servenest.topology.local import LocalTopology

# Keyed by the spec's (and the state record's) ``topology`` field.
TOPOLOGIES: dict[str, type[Topology]] = {
    "local": LocalTopology, "ecs-single": EcsTopology, "ecs-dual": EcsTopology, "ack": AckTopology,
}


def open_topology(
    spec: DeploymentSpec, state: DeploymentState | None = None,
    run: CommandRunner = subprocess_runner,
) -> Topology:
    try:
        cls = TOPOLOGIES[spec.topology]
    except KeyError:
        raise TopologyNotAvailableError(
            f"topology {spec.topology!r} validates, fits and plans, but this version can only "
            f"bring up: {', '.join(TOPOLOGIES)}"
        ) from None
    return cls(spec, state, run)


__all__ = ["TOPOLOGIES", "Endpoint", "EngineStatus", "Estimate", "RuntimeState", "StagedWeights", "Topology", "open_topology"]
