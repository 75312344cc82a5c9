"""vLLM's serving metrics, by vLLM's definitions (``calculate_metrics`` in
``vllm/benchmarks/serve.py`` of vLLM 0.32), so that the same run gives the same numbers.

- Output tokens: ``usage.completion_tokens``; when a successful request has none, the
  generated text re-tokenized without special tokens (vLLM's fallback), else 1.
- Input tokens: ``prompt_len`` of successful requests: the client-side count, replaced by
  the server's ``usage.prompt_tokens`` when it reports one (as vLLM 0.32's request
  functions do; the two differ for chat, where the server counts the chat template).
- TPOT per request when output > 1: (latency - TTFT) / (output - 1); request-weighted.
- ITL: every chunk gap of every request, concatenated; chunk-weighted.
- Goodput: requests meeting every given SLO, with TPOT 0 for 1-token outputs.
- Statistics: numpy mean, population std, median, linear percentiles; x1000 for ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servenest.bench.types import LoadRun, RequestResult, SampleRequest

METRIC_HEADERS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    # metric -> {"mean": ms, "median": ms, "std": ms, "percentiles": [(p, ms), ...]}
    stats: dict[str, dict] = field(default_factory=dict)
    output_lens: list[int] = field(default_factory=list)


def _stats(values: list[float], percentiles: Sequence[float]) -> dict:
    data = values or 0  # vLLM: an empty list counts as a single 0
    return {
        "mean": float(np.mean(data) * 1000),
        "median": float(np.median(data) * 1000),
        "std": float(np.std(data) * 1000),
        "percentiles": [(p, float(np.percentile(data, p) * 1000)) for p in percentiles],
    }


def percentile_key(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def _peaks(results: list[RequestResult]) -> tuple[float, int]:
    """vLLM's per-second buckets: peak output tokens/s (one per chunk) and concurrency."""
    ok = [r for r in results if r.success]
    if not ok:
        return 0.0, 0
    start = min(r.sent_s for r in ok)
    end = max(r.sent_s + r.latency for r in ok)
    seconds = int(np.ceil(end - start)) + 1
    tokens = np.zeros(seconds)
    concurrent = np.zeros(seconds)
    for r in ok:
        t = r.sent_s + r.ttft
        times = [t]
        for gap in r.itl:
            t += gap
            times.append(t)
        for tt in times:
            bucket = int(tt - start)
            if 0 <= bucket < seconds:
                tokens[bucket] += 1
        for s in range(int(r.sent_s - start), int(r.sent_s + r.latency - start) + 1):
            concurrent[s] += 1
    return float(tokens.max()), int(concurrent.max())


def calculate_metrics(
    requests: Sequence[SampleRequest], run: LoadRun, percentiles: Sequence[float] = (99,),
    goodput: dict[str, float] | None = None, tokenizer=None,
) -> BenchmarkMetrics:
    dur = run.duration_s
    output_lens: list[int] = []
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    total_input = 0
    for r in run.results:
        if not r.success:
            output_lens.append(0)
            continue
        n = r.output_tokens
        if not n:
            n = len(tokenizer.encode(r.generated_text, add_special_tokens=False)) if tokenizer else 1
        output_lens.append(n)
        total_input += r.prompt_len
        tpot = (r.latency - r.ttft) / (n - 1) if n > 1 else 0.0
        if n > 1:
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls += r.itl
        ttfts.append(r.ttft)
        e2els.append(r.latency)
    completed = len(ttfts)
    good = 0
    if goodput:
        columns = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        chosen = [(columns[k], v / 1000) for k, v in goodput.items()]
        for row in zip(*(c for c, _ in chosen), strict=True):
            if all(slo >= value for value, (_, slo) in zip(row, chosen, strict=True)):
                good += 1
    peak_tokens, peak_concurrency = _peaks(run.results)
    total_output = sum(output_lens)
    return BenchmarkMetrics(
        completed=completed, failed=len(run.results) - completed, total_input=total_input,
        total_output=total_output, request_throughput=completed / dur,
        request_goodput=good / dur, output_throughput=total_output / dur,
        total_token_throughput=(total_input + total_output) / dur,
        max_output_tokens_per_s=peak_tokens, max_concurrent_requests=peak_concurrency,
        stats={"ttft": _stats(ttfts, percentiles), "tpot": _stats(tpots, percentiles),
               "itl": _stats(itls, percentiles), "e2el": _stats(e2els, percentiles)},
        output_lens=output_lens,
    )


def result_dict(
    m: BenchmarkMetrics, run: LoadRun, percentile_metrics: Sequence[str], goodput: bool
) -> dict:
    """The keys ``vllm bench serve --save-result`` writes (besides the run's settings)."""
    out = {
        "duration": run.duration_s, "completed": m.completed, "failed": m.failed,
        "total_input_tokens": m.total_input, "total_output_tokens": m.total_output,
        "request_throughput": m.request_throughput,
        "request_goodput": m.request_goodput if goodput else None,
        "output_throughput": m.output_throughput,
        "total_token_throughput": m.total_token_throughput,
        "input_lens": [r.prompt_len for r in run.results], "output_lens": m.output_lens,
        "ttfts": [r.ttft for r in run.results], "itls": [r.itl for r in run.results],
        "latencies": [r.latency for r in run.results], "start_times": [r.sent_s for r in run.results],
        "queue_times": [r.queue_s for r in run.results],
        "generated_texts": [r.generated_text for r in run.results],
        "errors": [r.error for r in run.results],
        "max_output_tokens_per_s": m.max_output_tokens_per_s,
        "max_concurrent_requests": m.max_concurrent_requests,
    }
    for name in percentile_metrics:
        s = m.stats[name]
        out[f"mean_{name}_ms"] = s["mean"]
        out[f"median_{name}_ms"] = s["median"]
        out[f"std_{name}_ms"] = s["std"]
        for p, value in s["percentiles"]:
            out[f"p{percentile_key(p)}_{name}_ms"] = value
    return out


# How many distinct failure reasons the summary and the result's servenest block name.
FIRST_ERRORS = 5


def first_errors(results: Sequence[RequestResult], limit: int = FIRST_ERRORS) -> list[dict]:
    """The first ``limit`` distinct errors of failed requests, in order of first occurrence,
    each with how many requests failed with it."""
    counts: dict[str, int] = {}
    for r in results:
        if not r.success:
            reason = r.error or "failed without a reason"
            counts[reason] = counts.get(reason, 0) + 1
    return [{"error": e, "count": n} for e, n in list(counts.items())[:limit]]


def summary_text(
    m: BenchmarkMetrics, run: LoadRun, percentile_metrics: Sequence[str], *,
    request_rate: float, max_concurrency: int | None, goodput: bool,
) -> str:
    """The console summary, in ``vllm bench serve``'s layout; then, when requests failed,
    their count and the first distinct errors (vLLM prints the first ten raw errors)."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value, fmt: str = "{:<10}") -> None:
        lines.append(f"{label:<40} " + fmt.format(value))

    f2 = "{:<10.2f}"
    row("Successful requests:", m.completed)
    row("Failed requests:", m.failed)
    if max_concurrency is not None:
        row("Maximum request concurrency:", max_concurrency)
    if request_rate != float("inf"):
        row("Request rate configured (RPS):", request_rate, f2)
    row("Benchmark duration (s):", run.duration_s, f2)
    row("Total input tokens:", m.total_input)
    row("Total generated tokens:", m.total_output)
    row("Request throughput (req/s):", m.request_throughput, f2)
    if goodput:
        row("Request goodput (req/s):", m.request_goodput, f2)
    row("Output token throughput (tok/s):", m.output_throughput, f2)
    row("Peak output token throughput (tok/s):", m.max_output_tokens_per_s, f2)
    row("Peak concurrent requests:", m.max_concurrent_requests, f2)
    row("Total token throughput (tok/s):", m.total_token_throughput, f2)
    for name in ("ttft", "tpot", "itl", "e2el"):
        if name not in percentile_metrics:
            continue
        short, header = METRIC_HEADERS[name]
        s = m.stats[name]
        lines.append("{s:{c}^{n}}".format(s=header, n=50, c="-"))
        row(f"Mean {short} (ms):", s["mean"], f2)
        row(f"Median {short} (ms):", s["median"], f2)
        for p, value in s["percentiles"]:
            row(f"P{percentile_key(p)} {short} (ms):", value, f2)
    lines.append("=" * 50)
    resent = sum(r.resent for r in run.results)
    if resent:
        # vLLM's client would have counted these as failed ("Server disconnected").
        lines.append(f"{resent} of {len(run.results)} requests were sent again on a new "
                     "connection: the server closed their idle one as they went out")
    if m.failed:
        errors = first_errors(run.results)
        distinct = len({r.error for r in run.results if not r.success})
        lines.append(f"{m.failed} of {len(run.results)} requests failed; "
                     + (f"the first {len(errors)} of {distinct} distinct errors:"
                        if distinct > len(errors) else "errors:"))
        lines += [f"  {e['count']:>5} x {e['error']}" for e in errors]
    return "\n".join(lines)


def per_request_frame(run: LoadRun, output_lens: Sequence[int]) -> pd.DataFrame:
    """One row per request: what it was asked, what it saw, and how late it was sent."""
    rows = []
    for r, out_len in zip(run.results, output_lens, strict=True):
        tpot = (r.latency - r.ttft) / (out_len - 1) if r.success and out_len > 1 else np.nan
        rows.append({
            "index": r.index, "success": r.success, "prompt_len": r.prompt_len,
            "output_len": out_len, "ttft_ms": r.ttft * 1000 if r.success else np.nan,
            "tpot_ms": tpot * 1000, "e2el_ms": r.latency * 1000 if r.success else np.nan,
            "chunks": len(r.itl) + 1 if r.success else 0,
            "scheduled_s": r.scheduled_s, "sent_s": r.sent_s, "send_lag_ms": r.send_lag_s * 1000,
            "send_cpu_wait_ms": np.nan if r.send_cpu_wait_s is None else r.send_cpu_wait_s * 1000,
            "send_busy_ms": np.nan if r.send_busy_s is None else r.send_busy_s * 1000,
            "resent": r.resent, "error": r.error,
        })
    return pd.DataFrame(rows)
