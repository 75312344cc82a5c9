"""benchmark: measure a registered endpoint by vLLM's definitions and gate on its SLOs."""

from __future__ import annotations

from prefect import flow, get_run_logger

from servenest.bench.deployment import settings_for, slo_of
from servenest.bench.gate import history_row, regressions, slo_violations, sweep_max_rate
from servenest.bench.trend import summarize_benchmark
from servenest.errors import BenchmarkGateError
from servenest.spec import DeploymentSpec
from servenest.state import DeploymentState
from tasks.benchmark import load_history, publish_benchmark, run_benchmark_task
from tasks.registry import record_benchmark, registered
from tasks.secrets import load_api_key


@flow(name="benchmark", flow_run_name="benchmark-{name}")
def benchmark(name: str, overrides: dict | None = None, sweep: bool = False) -> dict:
    """Benchmark ``name``; fail when an SLO is missed or the client could not keep up.

    Args:
        name: Registered deployment name.
        overrides: Benchmark settings to change for this run (vllm bench serve names).
        sweep: Find the highest request rate that still meets the SLOs.
    """
    block, spec, state = registered(name)
    api_key = load_api_key(block.api_key_secret).get_secret_value()
    return measure(name, spec, state, block.base_url, api_key, overrides, sweep,
                   fail_on_regression=spec.benchmark.fail_on_regression, record=True)


def measure(
    deployment: str, spec: DeploymentSpec, state: DeploymentState, base_url: str, api_key: str,
    overrides: dict | None = None, sweep: bool = False, fail_on_regression: bool = False,
    record: bool = False,
) -> dict:
    """Benchmark ``base_url`` (serving ``spec``), add the run to ``deployment``'s trend and
    raise BenchmarkGateError when an SLO is missed, the run is invalid, or (when asked) it
    regressed. A redeploy measures its candidate with this before switching to it.
    ``record``: store the headline figures on the registered endpoint, passed or not."""
    settings = settings_for(spec, state, base_url, api_key, overrides)
    slo = slo_of(spec)
    result: dict = {"deployment": deployment}
    if sweep:
        from dataclasses import replace

        best, trials = sweep_max_rate(
            lambda rate: run_benchmark_task(replace(settings, request_rate=rate)), slo,
            start_rate=max(1.0, settings.num_prompts / 60), max_rate=10_000,
        )
        get_run_logger().info("sweep: highest rate meeting the SLOs %s req/s; trials %s", best, trials)
        result.update(max_rate_meeting_slos=best, sweep_trials=trials)
        if best is not None:
            settings = replace(settings, request_rate=best)
    outcome = run_benchmark_task(settings)
    history = load_history(deployment)
    row = history_row(outcome, spec.benchmark.hourly_price_usd)
    row["instance"] = spec.name
    violations = slo_violations(outcome, slo)
    regs = regressions(row, history, spec.benchmark.regression_margin)
    problems = violations + [f"invalid run: {r}" for r in outcome.invalid_reasons]
    if fail_on_regression:
        problems += [f"regression: {r}" for r in regs]
    # A rejected revision stays in the trend, but never becomes a baseline (gate.regressions).
    row["passed"] = not problems
    publish_benchmark(deployment, outcome, [*history, row], violations, regs)
    result.update(row=row, violations=violations, regressions=regs, valid=outcome.valid)
    result["summary"] = summarize_benchmark(row, passed=not problems)
    if record:
        record_benchmark(deployment, result["summary"])
    if problems:
        raise BenchmarkGateError(f"benchmark of {deployment} failed its gate: " + "; ".join(problems))
    for r in regs:
        get_run_logger().warning("regression (not failing the run): %s", r)
    return result
