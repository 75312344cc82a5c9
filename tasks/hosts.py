"""Make the provisioned machines able to serve: the host bootstrap, before staging."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from servenest.topology import Topology
from tasks.retry import transient_only


@task(name="bootstrap-hosts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def bootstrap_hosts(topology: Topology) -> dict:
    """Driver, fabric manager, docker and the NVIDIA toolkit (or, on a prepared image, a
    check of them); a rerun on a ready host returns in seconds."""
    result = topology.prepare_hosts()
    logger = get_run_logger()
    for host, output in (result.pop("log", None) or {}).items():
        logger.info("bootstrap output of %s:\n%s", host, output.rstrip())
    if result:
        logger.info("hosts of %s ready: %s", topology.spec.name, result)
    return result


@task(name="check-hosts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def check_hosts(topology: Topology) -> dict:
    """GPU count and memory, fabric manager, docker's view of the GPUs, free disk and the
    node-to-node ports; a failure names each host and its problem."""
    result = topology.check_hosts()
    if result:
        get_run_logger().info("hosts of %s passed the readiness check: %s", topology.spec.name, result)
    return result
