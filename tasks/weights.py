"""Stage verified weights where the engine reads them."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from servenest.topology import StagedWeights, Topology
from tasks.retry import transient_only


@task(name="stage-weights", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[10, 60], retry_condition_fn=transient_only)
def stage_weights(topology: Topology) -> StagedWeights:
    staged = topology.stage_weights()
    get_run_logger().info(
        "%s weights: %d files, %.1f MB at %s (digest %s)",
        "reused verified" if staged.reused else "staged", staged.files, staged.bytes / 1e6,
        staged.location, staged.digest[:12],
    )
    return staged
