"""The staged health gate against a launched endpoint."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from servenest.health import GateReport, GateTarget, default_deadline_s, run_gate
from servenest.topology import Topology
from tasks.artifacts import artifact_key


def gate_target(topology: Topology, api_key: SecretStr, watch_process: bool = True) -> GateTarget:
    ep = topology.endpoint()

    def is_alive() -> tuple[bool, int | None]:
        st = topology.status()
        return st.running, st.exit_code

    return GateTarget(
        base_url=ep.base_url, served_model_name=ep.served_model_name,
        api_key=api_key.get_secret_value(), engine=topology.engine,
        is_alive=is_alive if watch_process else None, log_tail=lambda: topology.logs(200),
    )


def gate_deadline(topology: Topology) -> float:
    spec = topology.spec
    return spec.health.deadline_s or default_deadline_s(spec.model_info.weight_gb)


@task(name="gate-endpoint", cache_policy=NO_CACHE)
def gate_endpoint(topology: Topology, api_key: SecretStr, just_launched: bool = True) -> GateReport:
    h = topology.spec.health
    report = run_gate(
        gate_target(topology, api_key), deadline_s=gate_deadline(topology),
        poll_s=h.poll_interval_s, prompt=h.prompt, max_tokens=h.max_tokens,
        expect_idle=just_launched,
    )
    for stage in report.stages:
        get_run_logger().info("gate: %-30s %6.2f s  %s", stage.name, stage.seconds, stage.detail)
    return report


@task(name="publish-diagnostics", cache_policy=NO_CACHE)
def publish_diagnostics(topology: Topology) -> dict:
    """After a failed gate: what the hosts say (container state, engine log, Ray size)."""
    logger = get_run_logger()
    try:
        found = topology.diagnostics()
    except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the gate's own error
        logger.warning("could not collect diagnostics of %s: %s", topology.spec.name, exc)
        return {}
    create_markdown_artifact(diagnostics_markdown(topology.spec.name, found),
                             key=artifact_key("diagnostics", topology.spec.name),
                             description=f"Why the gate of {topology.spec.name} failed")
    return found


def diagnostics_markdown(name: str, found: dict) -> str:
    parts = [f"# Diagnostics of {name}\n"]
    for section, value in found.items():
        parts.append(f"## {section}\n")
        if isinstance(value, dict):
            for key, item in value.items():
                text = "\n".join(item) if isinstance(item, list) else str(item)
                parts.append(f"**{key}**\n\n```\n{text}\n```\n" if "\n" in text else f"- {key}: {text}\n")
        else:
            text = "\n".join(value) if isinstance(value, list) else str(value)
            parts.append(f"```\n{text}\n```\n")
    return "\n".join(parts)
