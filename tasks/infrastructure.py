"""Bring a topology's machines and runtime up, and remove them again."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from servenest.state import delete_state
from servenest.topology import Topology
from tasks.retry import transient_only


@task(name="preflight", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def preflight(topology: Topology) -> dict:
    result = topology.preflight()
    get_run_logger().info("preflight of %s passed: %s", topology.spec.name, result)
    return result


@task(name="provision-infrastructure", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[5, 30], retry_condition_fn=transient_only)
def provision_infrastructure(topology: Topology) -> dict:
    result = topology.provision()
    get_run_logger().info("provisioned %s: %s", topology.name, result)
    return result


@task(name="teardown-deployment", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def teardown_deployment(topology: Topology) -> dict:
    result = topology.teardown()
    # Only once everything is gone: a teardown that failed half-way must still find it.
    delete_state(topology.spec.name)
    get_run_logger().info("tore down %s: %s", topology.spec.name, result)
    return result
