"""servenest/bench/metrics.py: vLLM's definitions, checked on numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from servenest.bench.metrics import (
    calculate_metrics,
    first_errors,
    per_request_frame,
    percentile_key,
    result_dict,
    summary_text,
)
from servenest.bench.types import LoadRun, RequestResult, SampleRequest

REQUESTS = [SampleRequest("a", 10, 4), SampleRequest("b", 20, 1), SampleRequest("c", 30, 8)]


def run() -> LoadRun:
    return LoadRun(
        results=[
            RequestResult(0, 10, True, 4, ttft=0.1, itl=[0.01, 0.02, 0.03], latency=0.16, sent_s=0.0),
            RequestResult(1, 20, True, 1, ttft=0.2, itl=[], latency=0.2, sent_s=0.5, scheduled_s=0.4),
            RequestResult(2, 30, False, error="HTTP 500: boom", sent_s=1.0, scheduled_s=1.0),
        ],
        duration_s=2.0, client_cpu_s=0.1,
    )


def test_counts_throughputs_and_token_totals():
    m = calculate_metrics(REQUESTS, run())
    assert (m.completed, m.failed) == (2, 1)
    assert m.total_input == 30  # successful requests' client-side prompt_len only
    assert m.total_output == 5 and m.output_lens == [4, 1, 0]
    assert m.request_throughput == pytest.approx(1.0)
    assert m.output_throughput == pytest.approx(2.5)
    assert m.total_token_throughput == pytest.approx(17.5)


def test_latency_statistics_follow_vllm():
    m = calculate_metrics(REQUESTS, run(), percentiles=[50, 99.9])
    ttft = m.stats["ttft"]
    assert ttft["mean"] == pytest.approx(150.0) and ttft["median"] == pytest.approx(150.0)
    assert ttft["std"] == pytest.approx(50.0)  # population std (ddof=0), as numpy's default
    # TPOT only for outputs > 1 token: (0.16 - 0.1) / 3 = 20 ms.
    assert m.stats["tpot"]["mean"] == pytest.approx(20.0)
    # ITL is chunk-weighted: every gap of every request.
    assert m.stats["itl"]["median"] == pytest.approx(20.0)
    assert dict(m.stats["itl"]["percentiles"])[99.9] == pytest.approx(
        np.percentile([0.01, 0.02, 0.03], 99.9) * 1000)
    assert m.stats["e2el"]["mean"] == pytest.approx(180.0)


def test_goodput_uses_tpot_zero_for_one_token_outputs():
    assert calculate_metrics(REQUESTS, run(), goodput={"ttft": 150}).request_goodput == pytest.approx(0.5)
    # TPOT SLO 10 ms: request 0 (20 ms) misses, request 1 (1 token, TPOT 0) meets it.
    assert calculate_metrics(REQUESTS, run(), goodput={"tpot": 10}).request_goodput == pytest.approx(0.5)
    assert calculate_metrics(REQUESTS, run(), goodput={"ttft": 100, "tpot": 10}).request_goodput == 0


def test_an_empty_run_counts_as_zeros_not_a_crash():
    empty = LoadRun([RequestResult(0, 5, False, error="x")], duration_s=1.0, client_cpu_s=0.0)
    m = calculate_metrics(REQUESTS[:1], empty)
    assert m.completed == 0 and m.stats["ttft"]["mean"] == 0.0
    assert m.max_output_tokens_per_s == 0.0


def test_result_keys_are_vllms():
    r = run()
    m = calculate_metrics(REQUESTS, r, percentiles=[99, 99.9])
    out = result_dict(m, r, ["ttft", "tpot", "itl", "e2el"], goodput=False)
    for key in ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "output_throughput", "total_token_throughput",
                "max_output_tokens_per_s", "max_concurrent_requests", "mean_ttft_ms",
                "median_tpot_ms", "std_itl_ms", "p99_e2el_ms", "p99.9_ttft_ms", "input_lens",
                "output_lens", "ttfts", "itls", "errors"):
        assert key in out
    assert out["request_goodput"] is None
    assert percentile_key(99.0) == "99" and percentile_key(99.9) == "99.9"


def test_summary_has_vllms_layout():
    r = run()
    m = calculate_metrics(REQUESTS, r)
    text = summary_text(m, r, ["ttft", "tpot", "itl"], request_rate=20.0, max_concurrency=None,
                        goodput=False)
    lines = text.splitlines()
    assert lines[0] == "{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")
    assert "{:<40} {:<10}".format("Successful requests:", 2) in lines
    assert "{:<40} {:<10.2f}".format("Request rate configured (RPS):", 20.0) in lines
    assert "{:<40} {:<10.2f}".format("Mean TTFT (ms):", 150.0) in lines
    assert any(line.startswith("P99 ITL (ms):") for line in lines)
    assert "E2EL" not in text and lines[-3] == "=" * 50
    # After vLLM's block: the failures and why (run() has one failed request).
    assert lines[-2:] == ["1 of 3 requests failed; errors:", "      1 x HTTP 500: boom"]


def test_summary_names_the_first_distinct_errors_with_counts():
    errors = ["HTTP 500: boom", "ServerDisconnectedError: Server disconnected", "HTTP 500: boom",
              "timeout", "HTTP 400: bad", "e5", "e6", "HTTP 500: boom"]
    results = [RequestResult(i, 10, False, error=e) for i, e in enumerate(errors)]
    results.append(RequestResult(8, 10, True, 4, ttft=0.1, itl=[0.01] * 3, latency=0.13))
    r = LoadRun(results, duration_s=1.0, client_cpu_s=0.0)
    m = calculate_metrics([SampleRequest("p", 10, 4)] * 9, r)
    assert first_errors(r.results) == [
        {"error": "HTTP 500: boom", "count": 3},
        {"error": "ServerDisconnectedError: Server disconnected", "count": 1},
        {"error": "timeout", "count": 1}, {"error": "HTTP 400: bad", "count": 1},
        {"error": "e5", "count": 1}]
    lines = summary_text(m, r, ["ttft"], request_rate=1.0, max_concurrency=None,
                         goodput=False).splitlines()
    tail = lines[lines.index("=" * 50) + 1:]
    assert tail[0] == "8 of 9 requests failed; the first 5 of 6 distinct errors:"
    assert tail[1:3] == ["      3 x HTTP 500: boom",
                         "      1 x ServerDisconnectedError: Server disconnected"]
    assert len(tail) == 6
    # A clean run's summary ends with vLLM's block.
    clean = LoadRun(results[-1:], duration_s=1.0, client_cpu_s=0.0)
    text = summary_text(calculate_metrics([SampleRequest("p", 10, 4)], clean), clean, ["ttft"],
                        request_rate=1.0, max_concurrency=None, goodput=False)
    assert text.splitlines()[-1] == "=" * 50 and "failed;" not in text


def test_per_request_frame_records_send_lag():
    r = run()
    frame = per_request_frame(r, calculate_metrics(REQUESTS, r).output_lens)
    assert list(frame["send_lag_ms"].round(3)) == [0.0, 100.0, 0.0]
    assert frame.loc[2, "error"] == "HTTP 500: boom" and not frame.loc[2, "success"]
    assert frame.loc[0, "tpot_ms"] == pytest.approx(20.0)


def test_summary_and_frame_say_which_requests_were_sent_again():
    r = run()
    r.results[0].resent = True
    lines = summary_text(calculate_metrics(REQUESTS, r), r, ["ttft"], request_rate=1.0,
                         max_concurrency=None, goodput=False).splitlines()
    tail = lines[lines.index("=" * 50) + 1:]
    assert tail[0] == ("1 of 3 requests were sent again on a new connection: the server closed "
                       "their idle one as they went out")
    assert tail[1] == "1 of 3 requests failed; errors:"
    assert per_request_frame(r, [4, 1, 0])["resent"].tolist() == [True, False, False]
