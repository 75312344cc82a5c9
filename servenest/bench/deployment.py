"""Benchmark settings for a registered deployment, from its spec."""

from __future__ import annotations

import math
from dataclasses import fields, replace

from servenest.bench.gate import Slo
from servenest.bench.run import BenchSettings
from servenest.errors import BenchmarkInputError
from servenest.spec import DeploymentSpec
from servenest.state import DeploymentState


def slo_of(spec: DeploymentSpec) -> Slo:
    b = spec.benchmark
    return Slo(b.slo_p99_ttft_ms, b.slo_p99_tpot_ms, b.min_goodput_rps, b.min_output_throughput)


def settings_for(
    spec: DeploymentSpec, state: DeploymentState, base_url: str, api_key: str,
    overrides: dict | None = None,
) -> BenchSettings:
    b = spec.benchmark
    tokenizer = b.tokenizer or state.weights.get("dir")
    if not tokenizer:
        raise BenchmarkInputError(
            f"{spec.name} has no local copy of its tokenizer; set benchmark.tokenizer"
        )
    chat = b.backend == "openai-chat"
    settings = BenchSettings(
        base_url=base_url, model=spec.model, served_model_name=spec.served_model_name,
        endpoint="/v1/chat/completions" if chat else "/v1/completions", backend=b.backend,
        tokenizer=tokenizer, dataset_name=b.dataset_name, dataset_path=b.dataset_path,
        num_prompts=b.num_prompts, request_rate=b.request_rate or math.inf,
        burstiness=b.burstiness, max_concurrency=b.max_concurrency, seed=b.seed,
        sharegpt_output_len=b.sharegpt_output_len, random_input_len=b.random_input_len,
        random_output_len=b.random_output_len, ignore_eos=b.ignore_eos,
        temperature=b.temperature, goodput=slo_of(spec).goodput, label=spec.name,
        metric_percentiles=[50.0, 90.0, 99.0],
        max_send_lag_ms=b.max_send_lag_ms, api_key=api_key,
    )
    if overrides:
        known = {f.name for f in fields(BenchSettings)} - {"api_key", "base_url"}
        unknown = set(overrides) - known
        if unknown:
            raise BenchmarkInputError(f"unknown benchmark settings {sorted(unknown)}; known: {sorted(known)}")
        settings = replace(settings, **{k: _coerce(getattr(settings, k), v) for k, v in overrides.items()})
    # The SLOs are p99s: the percentiles must include 99 whatever else is asked.
    if 99.0 not in settings.metric_percentiles:
        settings = replace(settings, metric_percentiles=[*settings.metric_percentiles, 99.0])
    return settings


def _coerce(current, value):
    """Prefect parameters are JSON: "inf" for a rate, strings for numbers from the CLI."""
    if isinstance(current, float) and isinstance(value, str | int):
        try:
            return float(value)
        except ValueError:
            raise BenchmarkInputError(f"{value!r} is not a number") from None
    return value
