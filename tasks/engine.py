"""Start (or replace) the serving engine."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from servenest.topology import Topology


@task(name="launch-engine", cache_policy=NO_CACHE)
def launch_engine(topology: Topology, api_key: SecretStr) -> dict:
    result = topology.launch(api_key.get_secret_value())
    get_run_logger().info("launched %s engine: %s", topology.spec.engine.kind, result)
    return result


@task(name="restart-engine", cache_policy=NO_CACHE)
def restart_engine(topology: Topology, api_key: SecretStr) -> dict:
    result = topology.restart_engine(api_key.get_secret_value())
    get_run_logger().info("restarted the %s engine of %s: %s", topology.spec.engine.kind, topology.spec.name, result)
    return result
