"""Turning benchmark results into decisions: SLOs, regressions against history, the
highest rate that still meets the SLOs, and what a million output tokens cost."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from servenest.bench.run import BenchmarkOutcome


@dataclass(frozen=True)
class Slo:
    p99_ttft_ms: float | None = None
    p99_tpot_ms: float | None = None
    min_goodput_rps: float | None = None
    min_output_throughput: float | None = None

    @property
    def goodput(self) -> dict[str, float]:
        """The per-request SLOs, as vLLM's ``--goodput`` takes them."""
        out = {}
        if self.p99_ttft_ms:
            out["ttft"] = self.p99_ttft_ms
        if self.p99_tpot_ms:
            out["tpot"] = self.p99_tpot_ms
        return out


def _p99(outcome: BenchmarkOutcome, metric: str) -> float:
    return dict(outcome.metrics.stats[metric]["percentiles"]).get(99.0, math.nan)


def slo_violations(outcome: BenchmarkOutcome, slo: Slo) -> list[str]:
    m = outcome.metrics
    out = []
    if m.completed == 0:
        out.append(f"no request succeeded ({m.failed} failed)")
    if slo.p99_ttft_ms is not None and not _p99(outcome, "ttft") <= slo.p99_ttft_ms:
        out.append(f"p99 TTFT {_p99(outcome, 'ttft'):.1f} ms > SLO {slo.p99_ttft_ms} ms")
    if slo.p99_tpot_ms is not None and not _p99(outcome, "tpot") <= slo.p99_tpot_ms:
        out.append(f"p99 TPOT {_p99(outcome, 'tpot'):.1f} ms > SLO {slo.p99_tpot_ms} ms")
    if slo.min_goodput_rps is not None and m.request_goodput < slo.min_goodput_rps:
        out.append(f"goodput {m.request_goodput:.2f} req/s < {slo.min_goodput_rps} req/s")
    if slo.min_output_throughput is not None and m.output_throughput < slo.min_output_throughput:
        out.append(f"output throughput {m.output_throughput:.1f} tok/s < {slo.min_output_throughput} tok/s")
    return out


def cost_per_million_output_tokens(hourly_price: float | None, output_throughput: float) -> float | None:
    if not hourly_price or output_throughput <= 0:
        return None
    return hourly_price / (output_throughput * 3600) * 1e6


def fingerprint(outcome: BenchmarkOutcome) -> str:
    """Runs are compared only with runs of the same load: rate, concurrency, dataset, sizes."""
    s = outcome.settings
    return (f"{s.backend}|{s.dataset_name}|{s.num_prompts}|{s.request_rate}|{s.burstiness}|"
            f"{s.max_concurrency}|{s.random_input_len}x{s.random_output_len}|{s.sharegpt_output_len}")


def history_row(outcome: BenchmarkOutcome, hourly_price: float | None = None) -> dict:
    """One compact row per run: what the trend table and the regression check compare."""
    m = outcome.metrics
    stats = m.stats
    return {"load": fingerprint(outcome),
        "date": outcome.result["date"], "completed": m.completed, "failed": m.failed,
        "request_rate": outcome.result["request_rate"],
        "median_ttft_ms": round(stats["ttft"]["median"], 3), "p99_ttft_ms": round(_p99(outcome, "ttft"), 3),
        "median_tpot_ms": round(stats["tpot"]["median"], 3), "p99_tpot_ms": round(_p99(outcome, "tpot"), 3),
        "median_itl_ms": round(stats["itl"]["median"], 3),
        "output_throughput": round(m.output_throughput, 3),
        "request_throughput": round(m.request_throughput, 3),
        # A baseline must be a clean run: client kept up, every request answered.
        "valid": outcome.valid and m.completed > 0 and m.failed == 0,
        "usd_per_m_output_tokens": cost_per_million_output_tokens(hourly_price, m.output_throughput),
        # What the run itself cost: duration x hourly price (servenest.bench.trend.cost_per_run).
        "duration_s": round(outcome.result["duration"], 3), "hourly_price_usd": hourly_price,
    }


# Lower is better for latencies, higher for throughput.
_TREND = {"median_ttft_ms": +1, "median_tpot_ms": +1, "median_itl_ms": +1, "output_throughput": -1}


def regressions(current: dict, history: list[dict], margin: float, window: int = 5) -> list[str]:
    """Metrics worse than the median of the last ``window`` valid runs by more than ``margin``."""
    previous = [
        h for h in history
        # Rows from before `passed` was recorded count as passed.
        if h.get("valid") and h.get("passed", True) and h.get("load") == current.get("load")
        and all(k in h for k in _TREND)
    ][-window:]
    if not previous:
        return []
    out = []
    for key, direction in _TREND.items():
        baseline = statistics.median(h[key] for h in previous)
        if not baseline:
            continue
        change = (current[key] - baseline) / baseline
        if change * direction > margin:
            out.append(f"{key} {current[key]:.2f} vs {baseline:.2f} over the last {len(previous)} "
                       f"runs ({change:+.0%}, margin {margin:.0%})")
    return out


def sweep_max_rate(
    run_at: Callable[[float], BenchmarkOutcome], slo: Slo, start_rate: float,
    max_rate: float, refine_steps: int = 3,
) -> tuple[float | None, list[tuple[float, list[str]]]]:
    """The highest request rate whose run meets the SLOs: double until a miss, then bisect.

    Returns (best rate or None, [(rate, violations)] for every trial, in order).
    """
    trials: list[tuple[float, list[str]]] = []

    # Trials are judged on latency and failures: a throughput floor cannot be met by a low
    # offered rate, and would stop the climb before it starts.
    latency_slo = Slo(p99_ttft_ms=slo.p99_ttft_ms, p99_tpot_ms=slo.p99_tpot_ms)

    def ok(rate: float) -> bool:
        outcome = run_at(rate)
        problems = slo_violations(outcome, latency_slo) + [f"invalid: {r}" for r in outcome.invalid_reasons]
        if outcome.metrics.failed:
            problems.append(f"{outcome.metrics.failed} requests failed")
        trials.append((rate, problems))
        return not problems

    good, bad = None, None
    rate = start_rate
    while rate <= max_rate:
        if ok(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if good is None or bad is None:
        return good, trials
    for _ in range(refine_steps):
        mid = (good + bad) / 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, trials
