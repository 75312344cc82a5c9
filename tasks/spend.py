"""Before any spend: the price, the budget and (optionally) a person's approval."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from servenest import time_to_ready
from servenest.cloud import weights_cache
from servenest.errors import ApprovalDeniedError, BudgetExceededError
from servenest.spec import DeploymentSpec
from servenest.topology import Estimate, Topology
from tasks.artifacts import artifact_key
from tasks.retry import transient_only


class SpendApproval(RunInput):
    approve: bool = False
    note: str = ""


@task(name="estimate-cost", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def estimate_cost(topology: Topology) -> Estimate:
    estimate = topology.estimate()
    create_markdown_artifact(
        price_markdown(topology.spec, estimate), key=artifact_key("price", topology.spec.name),
        description=f"Hourly price of {topology.spec.name} before it is created",
    )
    get_run_logger().info("%s costs %.2f %s/hour (%s)", topology.spec.name, estimate.hourly,
                          estimate.currency, estimate.placement)
    return estimate


def price_markdown(spec: DeploymentSpec, estimate: Estimate) -> str:
    budget = spec.cloud.hourly_budget
    rows = "\n".join(f"| {lid} | {rtype} | {amount:.2f} |" for lid, rtype, amount in estimate.lines)
    fallbacks = "".join(
        f"- if capacity fails over to {itype}: {hourly:.2f} {estimate.currency}/hour"
        f"{' (over budget: skipped)' if budget is not None and hourly > budget else ''}\n"
        for itype, hourly in estimate.alternatives
    )
    budget_text = f"{budget:.2f} {estimate.currency}/hour" if budget is not None else "none set"
    return (
        f"# Price of {spec.name}\n\n{spec.model} on {estimate.placement}\n\n"
        f"| Resource | Type | {estimate.currency}/hour |\n|---|---|---|\n{rows}\n"
        f"| **total** | | **{estimate.hourly:.2f}** |\n\n"
        + (f"{fallbacks}\n" if fallbacks else "")
        + f"Budget: {budget_text}. "
        + (estimate.note or "Pay-as-you-go list price from ROS GetTemplateEstimateCost; "
           "billing starts when the stack is created and stops at teardown.") + "\n"
        + ("\n" + time_to_ready.markdown(spec) if spec.topology in ("ecs-single", "ecs-dual") else "")
        + _cache_line(spec)
    )


def budget_violation(spec: DeploymentSpec, estimate: Estimate) -> str | None:
    budget = spec.cloud.hourly_budget
    if budget is not None and estimate.hourly > budget:
        return (f"{spec.name} would cost {estimate.hourly:.2f} {estimate.currency}/hour "
                f"({estimate.placement}), over cloud.hourly_budget {budget:.2f}; nothing was created")
    return None


@task(name="check-budget", cache_policy=NO_CACHE)
def check_budget(spec: DeploymentSpec, estimate: Estimate) -> None:
    problem = budget_violation(spec, estimate)
    if problem:
        raise BudgetExceededError(problem)


def approve_spend(spec: DeploymentSpec, estimate: Estimate) -> SpendApproval:
    """Pause the flow run until a person approves the spend in the UI (or the API)."""
    logger = get_run_logger()
    logger.warning("waiting up to %d s for approval of %.2f %s/hour for %s (Resume in the UI)",
                   spec.cloud.approval_timeout_s, estimate.hourly, estimate.currency, spec.name)
    answer = pause_flow_run(
        wait_for_input=SpendApproval.with_initial_data(
            description=price_markdown(spec, estimate) + "\nApprove to create the resources.",
            approve=False),
        timeout=spec.cloud.approval_timeout_s, poll_interval=2, key=f"approve-{spec.name}",
    )
    if not answer.approve:
        raise ApprovalDeniedError(f"spend for {spec.name} was not approved"
                                  + (f": {answer.note}" if answer.note else ""))
    logger.info("spend for %s approved%s", spec.name, f" ({answer.note})" if answer.note else "")
    return answer


def _cache_line(spec: DeploymentSpec) -> str:
    if spec.topology not in ("ecs-single", "ecs-dual") or spec.weights.cache != "snapshot":
        return ""
    cache = weights_cache.plan(spec)
    return (f"\nWeights cache: a snapshot of the weights disk ({spec.model_info.weight_gb:.0f} GB) is kept "
            f"after the first verified staging, about {cache['monthly_cny']:.2f} CNY/month of snapshot "
            f"storage (assumed list price {weights_cache.SNAPSHOT_CNY_PER_GB_MONTH} CNY/GB-month) while it "
            "exists; `servenest cache ls` lists it, `servenest cache rm` removes it.\n")
