"""benchmark: measure a registered endpoint by vLLM's definitions and gate on its SLOs."""

from __future__ import annotations

from prefect import flow, get_run_logger

from servenest.bench.deployment import settings_for, slo_of
from servenest.bench.gate import history_row, regressions, slo_violations, sweep_max_rate
from servenest.errors import BenchmarkGateError
from tasks.benchmark import load_history, publish_benchmark, run_benchmark_task
from tasks.registry import registered
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
    settings = settings_for(spec, state, block.base_url, api_key, overrides)
    slo = slo_of(spec)
    result: dict = {"deployment": name}
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
    history = load_history(name)
    row = history_row(outcome, spec.benchmark.hourly_price_usd)
    violations = slo_violations(outcome, slo)
    regs = regressions(row, history, spec.benchmark.regression_margin)
    publish_benchmark(name, outcome, [*history, row], violations, regs)
    result.update(row=row, violations=violations, regressions=regs, valid=outcome.valid)
    problems = violations + [f"invalid run: {r}" for r in outcome.invalid_reasons]
    if spec.benchmark.fail_on_regression:
        problems += [f"regression: {r}" for r in regs]
    if problems:
        raise BenchmarkGateError(f"benchmark of {name} failed its gate: " + "; ".join(problems))
    for r in regs:
        get_run_logger().warning("regression (not failing the run): %s", r)
    return result
