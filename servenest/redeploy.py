"""Where a redeploy puts the new revision: beside the live one, or in its place.

Beside (the other slot, ``servenest.slots``) keeps the old endpoint serving until the new
one has passed its gate and benchmark, at the price of running two copies for a while; in
place has a gap in service and a restore on failure, but needs no more money or GPUs. The
choice is plain arithmetic over the budget, the price and the quota limits, so it is
decided (and tested) here, away from Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

from servenest.spec import DeploymentSpec


@dataclass(frozen=True)
class Placement:
    side_by_side: bool
    reason: str
    # GPU kinds whose quota limit is missing: side by side goes on unguarded for them.
    unguarded: tuple[str, ...] = ()


def gpu_limit_name(kind: str) -> str:
    """The Prefect global concurrency limit holding the spare quota of one GPU kind."""
    return f"gpus-{kind.lower()}"


def choose_placement(
    *, allowed: bool, budget: float | None, live_hourly: float | None, new_hourly: float,
    currency: str, demand: dict[str, int], limits: dict[str, int | None],
) -> Placement:
    """``limits``: each GPU kind's limit (None: no limit exists)."""
    if not allowed:
        return Placement(False, "side by side is turned off for this run")
    if budget is not None:
        both = (live_hourly or 0.0) + new_hourly
        if live_hourly is None or both > budget:
            why = (f"two copies would cost {both:.2f} {currency}/hour, over cloud.hourly_budget "
                   f"{budget:.2f}" if live_hourly is not None
                   else "the live copy's price is unknown, so two copies may exceed cloud.hourly_budget")
            return Placement(False, why)
    for kind, count in sorted(demand.items()):
        limit = limits.get(kind)
        if limit is not None and count > limit:
            return Placement(False, f"a second copy needs {count} {kind} GPUs; the quota limit "
                             f"{gpu_limit_name(kind)} allows {limit} at once")
    unguarded = tuple(sorted(k for k in demand if limits.get(k) is None))
    spend = f"{(live_hourly or 0) + new_hourly:.2f} {currency}/hour while both run"
    return Placement(True, f"budget allows two copies ({spend})", unguarded)


def scaling_demand(spec: DeploymentSpec) -> dict[str, int]:
    """GPUs the autoscaler may add beyond ``replicas.min`` (ack), by kind."""
    if not spec.autoscaled or not spec.cloud.gpu_kind:
        return {}
    per_replica = (spec.cloud.gpus_per_node or 1) * spec.cloud.nodes
    return {spec.cloud.gpu_kind: per_replica * (spec.replicas.max - spec.replicas.min)}


def scaling_quota_problem(spec: DeploymentSpec, limits: dict[str, int | None]) -> str | None:
    """Why ``replicas.max`` is beyond the spare GPU quota, if it is (a missing limit: unchecked)."""
    for kind, extra in sorted(scaling_demand(spec).items()):
        limit = limits.get(kind)
        if limit is not None and extra > limit:
            return (f"{spec.name}: replicas.max {spec.replicas.max} may add {extra} {kind} GPUs beyond "
                    f"replicas.min {spec.replicas.min}, but the quota limit {gpu_limit_name(kind)} allows "
                    f"{limit}; lower replicas.max or raise the limit (prefect gcl update "
                    f"{gpu_limit_name(kind)} --limit N) after raising the account's quota")
    return None
