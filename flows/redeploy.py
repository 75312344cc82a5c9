"""redeploy: roll a registered deployment to a new revision without losing the endpoint.

The new revision comes up beside the old one (the other slot) when the budget and the GPU
quota allow, otherwise in place of it. Either way it must pass the staged gate and the
benchmark (SLOs met, no regression against the deployment's trend) before the registered
endpoint moves to it; until then the old one keeps serving, and a failure leaves it so.
"""

from __future__ import annotations

from contextlib import ExitStack

from prefect import flow, get_run_logger
from pydantic import SecretStr

from flows.benchmark import measure
from flows.common import clean_up_failed, register, serve
from servenest.errors import ServeNestError, SpecError
from servenest.health import GateReport
from servenest.redeploy import Placement, choose_placement
from servenest.slots import check_deployment_name, other_slot
from servenest.spec import DeploymentSpec
from servenest.timing import StageTimer
from servenest.topology import TOPOLOGIES, Estimate, Topology, open_topology
from tasks.artifacts import publish_stage_timings
from tasks.hosts import bootstrap_hosts, check_hosts
from tasks.infrastructure import preflight, provision_infrastructure, teardown_deployment
from tasks.quota import QuotaBusyError, hold_gpus, read_gpu_limits
from tasks.registry import find_endpoint, record_benchmark, registered
from tasks.secrets import load_api_key
from tasks.shell import prefect_shell_runner
from tasks.spec import check_spec
from tasks.spend import estimate_cost
from tasks.weights import stage_weights


@flow(name="redeploy", flow_run_name="redeploy-{spec.name}")
def redeploy(
    spec: DeploymentSpec, revision: str | None = None, side_by_side: bool = True,
    quota_wait_s: float = 1800.0,
) -> dict:
    """Bring ``spec`` (at ``revision``) up, prove it, then make it the registered endpoint.

    Args:
        spec: The deployment spec to roll out (the spec file's, as for provision).
        revision: Weights revision to roll out (hub branch, tag or commit); default: the spec's.
        side_by_side: Allow running the new copy beside the old one while it is proven.
        quota_wait_s: How long to wait for GPU quota (limits gpus-<kind>) before redeploying
            in place instead.
    """
    logger = get_run_logger()
    name = spec.name
    if find_endpoint(name) is None:
        # Nightly schedules fire for every deployment; only live ones are rolled.
        logger.info("%s is not registered; nothing to redeploy (provision it first)", name)
        return {"deployment": name, "redeployed": False, "reason": "not registered"}
    timer = StageTimer()
    try:
        with timer.stage("validate"):
            check_deployment_name(name)
            new_spec = spec.with_section("weights", revision=revision) if revision else spec
            check_spec(new_spec)
            api_key = load_api_key(new_spec.access.api_key_secret)
        block, live_spec, live_state = registered(name)
        live = open_topology(live_spec, live_state, run=prefect_shell_runner)
        candidate, estimate, placement, limits = _place(new_spec, block, side_by_side)
        result = {"deployment": name, "redeployed": True, "from": block.instance_name,
                  "side_by_side": placement.side_by_side, "placement": placement.reason}
        with ExitStack() as quota:
            if placement.side_by_side:
                try:
                    quota.enter_context(hold_gpus(candidate.gpu_demand(), limits, quota_wait_s))
                except QuotaBusyError as exc:
                    logger.warning("%s; redeploying in place", exc)
                    placement = Placement(False, str(exc))
                    result.update(side_by_side=False, placement=placement.reason)
            logger.info("redeploying %s %s: %s", name,
                        "beside the live copy" if placement.side_by_side else "in place", placement.reason)
            if placement.side_by_side:
                _beside(name, live, candidate, api_key, estimate, timer)
            else:
                _in_place(name, live, new_spec, api_key, estimate, timer)
        result["to"] = find_endpoint(name).instance_name
    finally:
        publish_stage_timings(name, timer.rows)
    return {**result, "stages": timer.rows}


def _place(new_spec: DeploymentSpec, block, allowed: bool) -> tuple[Topology, Estimate, Placement, dict]:
    """The candidate in the other slot, its price, whether it may run beside the live one,
    and the GPU quota limits."""
    cls = TOPOLOGIES[new_spec.topology]
    try:
        other = cls.spec_for_slot(new_spec, other_slot(new_spec.name, block.instance_name))
    except SpecError as exc:
        other, allowed = None, False
        get_run_logger().warning("no second slot for %s (%s)", new_spec.name, exc)
    candidate = open_topology(other or new_spec, run=prefect_shell_runner)
    if other is not None:
        try:
            preflight(candidate)  # in place, the live copy's own preflight passed already
        except ServeNestError as exc:
            get_run_logger().warning("the second slot %s fails its preflight (%s)", other.name, exc)
            allowed = False
    estimate = estimate_cost(candidate)
    demand = candidate.gpu_demand()
    limits = read_gpu_limits(demand)
    placement = choose_placement(
        allowed=allowed and other is not None, budget=new_spec.cloud.hourly_budget,
        live_hourly=block.hourly_cost, new_hourly=estimate.hourly, currency=estimate.currency,
        demand=demand, limits=limits)
    return candidate, estimate, placement, limits


def _beside(name: str, live: Topology, candidate: Topology, api_key: SecretStr,
            estimate: Estimate, timer: StageTimer) -> None:
    try:
        gate, proof = _bring_up_and_prove(name, candidate, api_key, timer)
    except BaseException:
        # The old copy was never touched: it goes on serving.
        clean_up_failed(candidate, False, timer)
        raise
    register(candidate, api_key, gate, timer, name, estimate)
    record_benchmark(name, proof["summary"])
    with timer.stage("retire old"):
        teardown_deployment(live)


def _in_place(name: str, live: Topology, new_spec: DeploymentSpec, api_key: SecretStr,
              estimate: Estimate, timer: StageTimer) -> None:
    if new_spec.topology != live.spec.topology:
        raise ServeNestError(
            f"{name} moves from {live.spec.topology} to {new_spec.topology}, which cannot happen "
            f"in place; allow side by side (cloud.hourly_budget, GPU quota) to move it")
    instance = live.spec.name
    topology = open_topology(TOPOLOGIES[new_spec.topology].spec_for_slot(new_spec, instance),
                             live.state, run=prefect_shell_runner)
    try:
        gate, proof = _bring_up_and_prove(name, topology, api_key, timer)
    except BaseException:
        get_run_logger().warning("the new revision of %s failed; relaunching the previous one", name)
        previous = open_topology(live.spec, topology.state, run=prefect_shell_runner)
        try:
            with timer.stage("restore previous"):
                stage_weights(previous)
                register(previous, api_key, serve(previous, api_key, timer, False), timer, name)
        except BaseException:
            clean_up_failed(previous, False, timer)
        raise
    register(topology, api_key, gate, timer, name, estimate)
    record_benchmark(name, proof["summary"])


def _bring_up_and_prove(
    name: str, topology: Topology, api_key: SecretStr, timer: StageTimer,
) -> tuple[GateReport, dict]:
    """Provision, stage, launch and gate the new revision, then the benchmark it must pass:
    SLOs met and no regression against the deployment's trend."""
    with timer.stage("provision"):
        provision_infrastructure(topology)
    with timer.stage("bootstrap hosts"):
        bootstrap_hosts(topology)
    with timer.stage("check hosts"):
        check_hosts(topology)
    with timer.stage("stage weights"):
        stage_weights(topology)
    gate = serve(topology, api_key, timer, run_load_check=False)
    with timer.stage("benchmark"):
        proof = measure(name, topology.spec, topology.state, topology.endpoint().base_url,
                        api_key.get_secret_value(), fail_on_regression=True)
    return gate, proof
