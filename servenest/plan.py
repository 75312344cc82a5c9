"""`servenest plan`: everything a spec would create, rendered without touching anything."""

from __future__ import annotations

from dataclasses import asdict

from servenest.errors import TopologyNotAvailableError
from servenest.fit import check_spec_fits
from servenest.spec import DeploymentSpec
from servenest.state import DeploymentState
from servenest.topology import open_topology


def render_plan(spec: DeploymentSpec) -> dict:
    plan: dict = {
        "spec": spec.model_dump(mode="json", exclude={"model_facts"} if spec.model_facts is None else set()),
        "fit": [asdict(r) | {"summary": r.summary()} for r in check_spec_fits(spec)],
    }
    try:
        # A blank state: planning must not read or write what a live deployment recorded.
        topology = open_topology(spec, DeploymentState(spec.name, spec.topology))
    except TopologyNotAvailableError as exc:
        plan["topology"] = str(exc)
        return plan
    plan.update(topology.plan())
    return plan
