"""health-gate: check a registered endpoint end to end, now."""

from __future__ import annotations

from prefect import flow

from servenest.errors import GateFailedError
from servenest.health import GateReport
from servenest.topology import open_topology
from tasks.gate import gate_endpoint
from tasks.registry import record_gate, registered
from tasks.secrets import load_api_key


@flow(name="health-gate", flow_run_name="health-gate-{name}")
def health_gate(name: str, deadline_s: float = 60.0) -> dict:
    """Run the staged gate against the registered endpoint ``name``.

    Args:
        name: Registered deployment name.
        deadline_s: How long the gate may wait for a serving engine.
    """
    block, spec, state = registered(name)
    spec = spec.model_copy(update={"health": spec.health.model_copy(update={"deadline_s": deadline_s})})
    topology = open_topology(spec, state)
    try:
        report = gate_endpoint(topology, load_api_key(block.api_key_secret), just_launched=False)
    except GateFailedError as exc:
        record_gate(name, GateReport(passed=False, stages=exc.stages))  # status shows it
        raise
    record_gate(name, report)
    return {"deployment": name, "passed": report.passed, "stages": report.table()}
