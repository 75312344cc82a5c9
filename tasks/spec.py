"""Validate a spec and check that the model fits, before anything is created."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from servenest.fit import FitReport, check_spec_fits
from servenest.spec import DeploymentSpec


@task(name="check-spec", cache_policy=NO_CACHE)
def check_spec(spec: DeploymentSpec) -> list[FitReport]:
    from prefect import get_run_logger

    reports = check_spec_fits(spec)
    for report in reports:
        get_run_logger().info("fits: %s", report.summary())
    return reports
