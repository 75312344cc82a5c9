"""GPU quota as Prefect global concurrency limits: one limit per GPU kind, ``gpus-<kind>``,
holding how many more GPUs of that kind the account may run at once (its quota minus what
steady deployments hold). A side-by-side redeploy occupies its GPUs there from before the
second copy is created until the old copy is gone, so any number of nightly redeploys
queue instead of exceeding the quota."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from servenest.errors import ServeNestError
from servenest.redeploy import gpu_limit_name, scaling_demand, scaling_quota_problem
from servenest.spec import DeploymentSpec


class QuotaBusyError(ServeNestError):
    """The GPUs a second copy needs did not become free in time."""


@task(name="read-gpu-limits", cache_policy=NO_CACHE)
def read_gpu_limits(demand: dict[str, int]) -> dict[str, int | None]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    limits: dict[str, int | None] = {}
    with get_client(sync_client=True) as client:
        for kind in demand:
            try:
                limits[kind] = client.read_global_concurrency_limit_by_name(gpu_limit_name(kind)).limit
            except ObjectNotFound:
                limits[kind] = None
    return limits


class ScalingQuotaError(ServeNestError):
    """replicas.max could take more GPUs than the quota has to spare."""


@task(name="check-scaling-quota", cache_policy=NO_CACHE)
def check_scaling_quota(spec: DeploymentSpec) -> None:
    """Before any spend: what the autoscaler may add fits the spare GPU quota."""
    demand = scaling_demand(spec)
    if not demand:
        return
    problem = scaling_quota_problem(spec, read_gpu_limits.fn(demand))
    if problem:
        raise ScalingQuotaError(problem)


@contextmanager
def hold_gpus(demand: dict[str, int], limits: dict[str, int | None], wait_s: float) -> Iterator[None]:
    """Occupy ``demand`` GPUs of each kind that has a limit; QuotaBusyError after ``wait_s``."""
    logger = get_run_logger()
    with ExitStack() as stack:
        # Sorted, so two runs needing two kinds never wait on each other crosswise.
        for kind in sorted(demand):
            if limits.get(kind) is None:
                logger.warning("no %s limit exists: the second copy's %d %s GPUs are not "
                               "checked against a quota (create it: prefect gcl create %s --limit N)",
                               gpu_limit_name(kind), demand[kind], kind, gpu_limit_name(kind))
                continue
            logger.info("waiting up to %.0f s for %d GPUs of %s", wait_s, demand[kind], gpu_limit_name(kind))
            try:
                stack.enter_context(concurrency(gpu_limit_name(kind), occupy=demand[kind],
                                                timeout_seconds=wait_s, strict=True,
                                                # an API hiccup hours in must not cancel the run
                                                raise_on_lease_renewal_failure=False))
            except TimeoutError:
                raise QuotaBusyError(
                    f"{demand[kind]} {kind} GPUs did not free up in {gpu_limit_name(kind)} "
                    f"within {wait_s:.0f} s") from None
        yield
