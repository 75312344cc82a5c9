"""One benchmark run, from settings to results: sample, schedule, load, measure, judge.

Settings carry ``vllm bench serve``'s names and defaults so a seed user's command line
maps one to one. Everything that can be wrong with the input (dataset, tokenizer, rate,
endpoint, key, model name) is checked before the first scheduled request.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from servenest.bench import datasets, metrics, runner, schedule
from servenest.bench.tokenizer import load_tokenizer
from servenest.bench.types import LoadRun, SampleRequest
from servenest.errors import BenchmarkInputError

CHAT_BACKENDS = {"openai-chat"}
COMPLETION_BACKENDS = {"openai", "vllm"}

# A run whose client fell behind measured the client, not the server.
MAX_CLIENT_CPU_SHARE = 0.90


@dataclass
class BenchSettings:
    base_url: str
    model: str  # model id: names the tokenizer and the result
    endpoint: str = "/v1/completions"
    backend: str = "openai"
    served_model_name: str | None = None
    tokenizer: str | None = None  # directory or tokenizer.json; default: model
    dataset_name: str = "random"
    dataset_path: str | None = None
    num_prompts: int = 1000
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    sharegpt_output_len: int | None = None
    custom_output_len: int = 256
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    ignore_eos: bool = False
    temperature: float | None = None
    goodput: dict[str, float] = field(default_factory=dict)
    metric_percentiles: list[float] = field(default_factory=lambda: [99.0])
    percentile_metrics: list[str] = field(default_factory=lambda: ["ttft", "tpot", "itl"])
    num_warmups: int = 0
    label: str | None = None
    # Sends later than this (p99) mean the client, or the machine it shares, fell behind.
    max_send_lag_ms: float = 10.0
    request_timeout_s: float = 6 * 3600.0  # vLLM's session timeout
    save_detailed: bool = False
    api_key: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        if self.backend not in CHAT_BACKENDS | COMPLETION_BACKENDS:
            raise BenchmarkInputError(f"--backend {self.backend!r}: use openai, vllm or openai-chat")
        if self.backend in CHAT_BACKENDS and not self.endpoint.endswith("/chat/completions"):
            raise BenchmarkInputError("--backend openai-chat needs --endpoint /v1/chat/completions")
        if self.num_prompts <= 0:
            raise BenchmarkInputError("--num-prompts must be at least 1")
        if not self.request_rate > 0:
            raise BenchmarkInputError(f"--request-rate must be > 0 (or inf), got {self.request_rate}")
        if not self.burstiness > 0:
            raise BenchmarkInputError(f"--burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency <= 0:
            raise BenchmarkInputError("--max-concurrency must be at least 1")
        unknown = set(self.goodput) - {"ttft", "tpot", "e2el"}
        if unknown:
            raise BenchmarkInputError(f"--goodput accepts ttft, tpot and e2el, not {sorted(unknown)}")
        bad = set(self.percentile_metrics) - set(metrics.METRIC_HEADERS)
        if bad:
            raise BenchmarkInputError(f"--percentile-metrics: unknown {sorted(bad)}")
        if self.dataset_name in ("sharegpt", "custom") and not self.dataset_path:
            raise BenchmarkInputError(f"--dataset-name {self.dataset_name} needs --dataset-path")
        if self.dataset_name not in ("sharegpt", "random", "custom"):
            raise BenchmarkInputError("--dataset-name must be sharegpt, random or custom")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def effective_ignore_eos(self) -> bool:
        # vllm bench serve forces it for random prompts so outputs run to length.
        return self.ignore_eos or self.dataset_name == "random"


@dataclass
class BenchmarkOutcome:
    settings: BenchSettings
    metrics: metrics.BenchmarkMetrics
    run: LoadRun
    result: dict  # vllm --save-result keys
    frame: pd.DataFrame
    summary: str
    valid: bool
    invalid_reasons: list[str]
    client_cpu_per_request_ms: float
    send_lag_p99_ms: float


def sample(settings: BenchSettings, tok=None) -> list[SampleRequest]:
    tok = tok or load_tokenizer(settings.tokenizer or settings.model)
    if settings.dataset_name == "sharegpt":
        return datasets.sample_sharegpt(
            settings.dataset_path, settings.num_prompts, tok, seed=settings.seed,
            fixed_output_len=settings.sharegpt_output_len,
        )
    if settings.dataset_name == "custom":
        return datasets.sample_custom(
            settings.dataset_path, settings.num_prompts, tok, seed=settings.seed,
            output_len=settings.custom_output_len,
        )
    return datasets.sample_random(
        tok, settings.num_prompts, input_len=settings.random_input_len,
        output_len=settings.random_output_len, range_ratio=settings.random_range_ratio,
        seed=settings.seed,
    )


def extra_body(settings: BenchSettings) -> dict:
    # vLLM 0.32 sends sampling parameters only when given (no temperature=0 default).
    return {} if settings.temperature is None else {"temperature": settings.temperature}


def run_benchmark(settings: BenchSettings, requests: list[SampleRequest] | None = None) -> BenchmarkOutcome:
    settings.validate()
    tok = load_tokenizer(settings.tokenizer or settings.model)
    requests = requests if requests is not None else sample(settings, tok)
    offsets = schedule.arrival_offsets(
        len(requests), settings.request_rate, settings.burstiness, settings.seed
    )
    runner.check_endpoint(
        settings.base_url, settings.endpoint, settings.backend, settings.model_name,
        # A one-token probe, not requests[0]: vLLM 0.32 sends no test request by default, and
        # warming the prefix cache for the first dataset prompt would skew its TTFT.
        settings.api_key, SampleRequest("ping", 1, 1), ignore_eos=settings.effective_ignore_eos,
        extra_body=extra_body(settings),
    )
    run = runner.run_load(
        settings.base_url, settings.endpoint, settings.backend, settings.model_name, requests,
        offsets, api_key=settings.api_key, max_concurrency=settings.max_concurrency,
        num_warmups=settings.num_warmups, ignore_eos=settings.effective_ignore_eos,
        extra_body=extra_body(settings), request_timeout_s=settings.request_timeout_s,
    )
    return measure(settings, requests, run, tok)


def measure(
    settings: BenchSettings, requests: list[SampleRequest], run: LoadRun, tokenizer=None
) -> BenchmarkOutcome:
    # The tokenizer counts output tokens of a server that sends no usage (vLLM's fallback).
    m = metrics.calculate_metrics(
        requests, run, settings.metric_percentiles, settings.goodput or None, tokenizer
    )
    result = {**run_header(settings),
              **metrics.result_dict(m, run, settings.percentile_metrics, bool(settings.goodput))}
    frame = metrics.per_request_frame(run, m.output_lens)
    lags = [r.send_lag_s for r in run.results]
    lag_p99 = float(np.percentile(lags, 99)) if lags else 0.0
    split = late_send_lag_split(run, settings.max_send_lag_ms / 1000)
    load = _load_average()
    reasons = []
    if lag_p99 * 1000 > settings.max_send_lag_ms:
        reason = f"send lag p99 {lag_p99 * 1000:.1f} ms > {settings.max_send_lag_ms:g} ms"
        if split is not None:
            reason += (f" (of the late sends' lag, {split[0]:.0%} the client was runnable but had "
                       f"no CPU, held by other processes"
                       + (f": load average {load:.1f} on {os.cpu_count()} CPUs" if load is not None
                          else "")
                       + f"; {split[1]:.0%} it was busy with its own work)")
        reasons.append(reason)
    if run.duration_s and run.client_cpu_s / run.duration_s > MAX_CLIENT_CPU_SHARE:
        reasons.append(
            f"client used {run.client_cpu_s / run.duration_s:.0%} of a core: it was the bottleneck"
        )
    result["servenest"] = {
        "send_lag_p99_ms": lag_p99 * 1000, "client_cpu_s": run.client_cpu_s,
        "client_cpu_wait_s": run.cpu_wait_s,
        "late_send_cpu_wait_share": split[0] if split else None,
        "late_send_client_busy_share": split[1] if split else None,
        "load_average_1m": load, "cpus": os.cpu_count(),
        "first_errors": metrics.first_errors(run.results),
        "resent_after_idle_close": sum(r.resent for r in run.results),
        "valid": not reasons, "invalid_reasons": reasons,
    }
    summary = metrics.summary_text(
        m, run, settings.percentile_metrics, request_rate=settings.request_rate,
        max_concurrency=settings.max_concurrency, goodput=bool(settings.goodput),
    )
    return BenchmarkOutcome(
        settings=settings, metrics=m, run=run, result=result, frame=frame, summary=summary,
        valid=not reasons, invalid_reasons=reasons,
        client_cpu_per_request_ms=run.client_cpu_s / max(len(run.results), 1) * 1000,
        send_lag_p99_ms=lag_p99 * 1000,
    )


def late_send_lag_split(run: LoadRun, limit_s: float) -> tuple[float, float] | None:
    """Of the lag of sends later than ``limit_s``: the share the client's loop thread spent
    runnable without a CPU (the machine's CPUs held by other processes), and the share it
    spent on a CPU (the client's own work). None when no send was late or the kernel did not
    say. Each send's two parts are capped at its lag."""
    lag = wait = busy = 0.0
    for r in run.results:
        if r.send_lag_s > limit_s and r.send_cpu_wait_s is not None:
            w = min(r.send_cpu_wait_s, r.send_lag_s)
            lag += r.send_lag_s
            wait += w
            busy += min(r.send_busy_s or 0.0, r.send_lag_s - w)
    return (wait / lag, busy / lag) if lag else None


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_header(s: BenchSettings) -> dict:
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"), "endpoint_type": s.backend,
        "backend": s.backend, "label": s.label, "model_id": s.model,
        "tokenizer_id": s.tokenizer or s.model, "num_prompts": s.num_prompts,
        "request_rate": s.request_rate if s.request_rate < math.inf else "inf",
        "burstiness": s.burstiness, "max_concurrency": s.max_concurrency,
    }


def result_filename(s: BenchSettings, date: str) -> str:
    """vLLM's name: {label|backend}-{rate}qps[-concurrency{N}]-{model basename}-{date}.json"""
    conc = f"-concurrency{s.max_concurrency}" if s.max_concurrency is not None else ""
    return f"{s.label or s.backend}-{s.request_rate}qps{conc}-{s.model.split('/')[-1]}-{date}.json"


# What `vllm bench serve --save-result` leaves out unless --save-detailed, except `errors`:
# one short string per request ("" for a success), kept so a saved run always says why its
# requests failed (vLLM drops it, and its failed runs then say nothing).
DETAILED_FIELDS = ("input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts")


def save_result(outcome: BenchmarkOutcome, result_dir: str | None, filename: str | None) -> Path:
    name = filename or result_filename(outcome.settings, outcome.result["date"])
    path = Path(result_dir or ".") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    result = outcome.result if outcome.settings.save_detailed else {
        k: v for k, v in outcome.result.items() if k not in DETAILED_FIELDS}
    path.write_text(json.dumps(result, default=_jsonable))
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
