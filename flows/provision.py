"""provision: validate, provision, stage, launch, gate and register a deployment."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import clean_up_failed, refuse_if_serving, register, serve
from servenest.spec import DeploymentSpec
from servenest.timing import StageTimer
from servenest.topology import open_topology
from tasks.artifacts import publish_stage_timings
from tasks.hosts import bootstrap_hosts, check_hosts
from tasks.infrastructure import preflight, provision_infrastructure
from tasks.quota import check_scaling_quota
from tasks.secrets import load_api_key
from tasks.shell import prefect_shell_runner
from tasks.spec import check_spec
from tasks.spend import approve_spend, check_budget, estimate_cost
from tasks.weights import stage_weights


@flow(name="provision", flow_run_name="provision-{spec.name}")
def provision(spec: DeploymentSpec, keep_on_failure: bool = False, load_check: bool = False) -> dict:
    """Bring a deployment up and prove it; a failed bring-up removes what it made.

    Nothing is created before the checks that can be made without spending pass: spec and
    fit, the cloud preflight (credentials, region, zones, instance types, template), the
    price against ``cloud.hourly_budget`` and, with ``cloud.require_approval``, a person's
    approval.

    Args:
        spec: The deployment spec (a file of deployments/, as parameters).
        keep_on_failure: Keep a failed bring-up running for debugging.
        load_check: Run a short load check through the endpoint before registering it.
    """
    timer = StageTimer()
    try:
        with timer.stage("validate"):
            check_spec(spec)
            api_key = load_api_key(spec.access.api_key_secret)
        topology = open_topology(spec, run=prefect_shell_runner)
        refuse_if_serving(topology)
        try:
            # Inside the clean-up: what a crashed earlier run left (a recorded stack) must
            # not keep billing because this run stopped at a check.
            with timer.stage("preflight"):
                preflight(topology)
            with timer.stage("price"):
                estimate = estimate_cost(topology)
                check_budget(spec, estimate)
                check_scaling_quota(spec)
            if spec.cloud.require_approval:
                with timer.stage("approval"):
                    approve_spend(spec, estimate)
            with timer.stage("provision"):
                provision_infrastructure(topology)
            with timer.stage("bootstrap hosts"):
                bootstrap_hosts(topology)
            with timer.stage("check hosts"):
                check_hosts(topology)
            with timer.stage("stage weights"):
                stage_weights(topology)
            gate = serve(topology, api_key, timer, load_check or spec.benchmark.enabled)
            register(topology, api_key, gate, timer, estimate=estimate)
            if spec.benchmark.enabled:
                from flows.benchmark import benchmark

                with timer.stage("benchmark"):
                    benchmark(spec.name)
        except BaseException:  # also Ctrl-C and Prefect's cancellation (TerminationSignal)
            clean_up_failed(topology, keep_on_failure, timer)
            raise
    finally:
        publish_stage_timings(spec.name, timer.rows)
    ep = topology.endpoint()
    get_run_logger().info("%s is serving %s at %s", spec.name, ep.served_model_name, ep.base_url)
    return {"deployment": spec.name, "base_url": ep.base_url, "model": ep.served_model_name,
            "gate_passed": gate.passed, "stages": timer.rows}
