"""A short load check through the endpoint."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from servenest.errors import GateFailedError
from servenest.loadcheck import LoadCheckResult, run_load_check
from servenest.topology import Topology


@task(name="load-check", cache_policy=NO_CACHE)
def load_check(topology: Topology, api_key: SecretStr) -> LoadCheckResult:
    b = topology.spec.benchmark
    ep = topology.endpoint()
    result = run_load_check(
        ep.base_url, ep.served_model_name, api_key.get_secret_value(),
        requests=b.requests, concurrency=b.concurrency, max_tokens=b.max_tokens,
    )
    get_run_logger().info("load check: %s", asdict(result))
    if result.failed:
        raise GateFailedError(f"load check: {result.failed}/{result.requests} requests failed: {result.errors}")
    return result
