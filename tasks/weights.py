"""Stage verified weights where the engine reads them, with a progress artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from servenest.topology import StagedWeights, Topology
from tasks.artifacts import artifact_key
from tasks.retry import transient_only


@task(name="stage-weights", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[10, 60], retry_condition_fn=transient_only)
def stage_weights(topology: Topology) -> StagedWeights:
    name = topology.spec.name
    artifact_id = create_progress_artifact(
        0.0, key=artifact_key("weights", name), description=f"Staging {topology.spec.model} for {name}")

    def progress(percent: float, message: str) -> None:
        update_progress_artifact(artifact_id, percent, description=message)

    staged = topology.stage_weights(progress)
    get_run_logger().info(
        "%s weights: %d files, %.1f MB at %s (digest %s)",
        "reused verified" if staged.reused else "staged", staged.files, staged.bytes / 1e6,
        staged.location, staged.digest[:12],
    )
    return staged
