"""Steps the flows share: serve-gate-register, and cleaning up after a failed bring-up."""

from __future__ import annotations

from prefect import get_run_logger
from pydantic import SecretStr

from servenest.errors import AlreadyServingError
from servenest.health import GateReport
from servenest.slots import check_deployment_name, deployment_of
from servenest.timing import StageTimer
from servenest.topology import Estimate, Topology
from tasks.artifacts import publish_connection_card
from tasks.engine import launch_engine
from tasks.gate import gate_endpoint, publish_diagnostics
from tasks.infrastructure import teardown_deployment
from tasks.load import load_check
from tasks.registry import find_endpoint, forget_instance, register_endpoint


def serve(topology: Topology, api_key: SecretStr, timer: StageTimer, run_load_check: bool) -> GateReport:
    """Launch the engine and prove it; nothing is registered yet."""
    with timer.stage("launch"):
        launch_engine(topology, api_key)
    with timer.stage("gate"):
        try:
            report = gate_endpoint(topology, api_key)
        except Exception:
            publish_diagnostics(topology)
            raise
    if run_load_check:
        with timer.stage("load check"):
            load_check(topology, api_key)
    return report


def register(
    topology: Topology, api_key: SecretStr, report: GateReport, timer: StageTimer,
    deployment: str | None = None, estimate: Estimate | None = None,
) -> None:
    """Make ``topology`` the endpoint of ``deployment`` (default: its spec's name)."""
    with timer.stage("register"):
        register_endpoint(topology, report, deployment, estimate)
        publish_connection_card(topology, api_key, deployment)


def refuse_if_serving(topology: Topology) -> None:
    """A second provision must not replace (or, failing, tear down) a live deployment, in
    either slot."""
    name = topology.spec.name
    check_deployment_name(name)
    block = find_endpoint(name)
    if block is not None and block.instance_name != name:
        raise AlreadyServingError(
            f"{name} is registered as serving from {block.instance_name} (after a side-by-side "
            f"redeploy); change it with the launch or redeploy flow, or tear it down first")
    status = topology.status()
    if status.running:
        raise AlreadyServingError(
            f"{name} is already serving ({status.detail}); change it with the "
            f"launch flow, or tear it down first"
        )


def clean_up_failed(topology: Topology, keep: bool, timer: StageTimer) -> None:
    """After a failed bring-up: tear down what it created, unless asked to keep it."""
    logger = get_run_logger()
    name = topology.spec.name
    if keep:
        deployment = deployment_of(name)
        logger.warning(
            "bring-up of %s failed; KEPT for debugging as asked (engine log: %s). Remove it "
            "with `servenest down %s` or `prefect deployment run teardown/%s`.",
            name, topology.state.engine.get("log"), deployment, deployment,
        )
        return
    logger.warning("bring-up of %s failed; tearing down what it created", name)
    with timer.stage("teardown after failure"):
        try:
            teardown_deployment(topology)
            forget_instance(name)
        except BaseException:
            # Cancelled or interrupted while cleaning up: no Prefect task can run any
            # more, but the engine must not outlive the run.
            topology.teardown()
            raise
