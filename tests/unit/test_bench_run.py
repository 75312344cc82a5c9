"""servenest/bench/run.py: settings checked before any request, and run validity."""

from __future__ import annotations

import math

import pytest

from servenest.bench.run import BenchSettings, measure, result_filename
from servenest.bench.types import LoadRun, RequestResult, SampleRequest
from servenest.errors import BenchmarkInputError

BASE = {"base_url": "http://127.0.0.1:9", "model": "m/tiny"}


@pytest.mark.parametrize(("change", "message"), [
    ({"request_rate": 0}, "request-rate"), ({"request_rate": -5}, "request-rate"),
    ({"burstiness": 0}, "burstiness"), ({"num_prompts": 0}, "num-prompts"),
    ({"max_concurrency": 0}, "max-concurrency"), ({"backend": "tgi"}, "backend"),
    ({"backend": "openai-chat"}, "chat/completions"), ({"goodput": {"itl": 5}}, "goodput"),
    ({"percentile_metrics": ["ttft", "foo"]}, "percentile-metrics"),
    ({"dataset_name": "sharegpt"}, "dataset-path"), ({"dataset_name": "sonnet"}, "dataset-name"),
])
def test_bad_settings_are_refused_before_the_run(change, message):
    with pytest.raises(BenchmarkInputError, match=message):
        BenchSettings(**BASE, **change).validate()


def test_random_prompts_ignore_eos_as_vllm_does():
    assert BenchSettings(**BASE).effective_ignore_eos is True
    assert BenchSettings(**BASE, dataset_name="sharegpt", dataset_path="x").effective_ignore_eos is False


def _run(lags_ms: list[float], cpu_s: float = 0.1, duration_s: float = 10.0) -> LoadRun:
    return LoadRun([RequestResult(i, 8, True, 4, ttft=0.01, itl=[0.001] * 3, latency=0.013,
                                  scheduled_s=i * 0.1, sent_s=i * 0.1 + lag / 1000)
                    for i, lag in enumerate(lags_ms)], duration_s=duration_s, client_cpu_s=cpu_s)


def test_a_client_that_fell_behind_makes_the_run_invalid():
    reqs = [SampleRequest("p", 8, 4)] * 100
    ok = measure(BenchSettings(**BASE), reqs, _run([0.2] * 100))
    assert ok.valid and ok.result["servenest"]["valid"] is True
    late = measure(BenchSettings(**BASE), reqs, _run([0.2] * 95 + [40.0] * 5))
    assert not late.valid and "send lag p99" in late.invalid_reasons[0]
    assert late.send_lag_p99_ms == pytest.approx(40.0, rel=0.01)
    busy = measure(BenchSettings(**BASE), reqs, _run([0.2] * 100, cpu_s=9.5))
    assert not busy.valid and "bottleneck" in busy.invalid_reasons[0]
    tolerant = measure(BenchSettings(**BASE, max_send_lag_ms=100), reqs, _run([0.2] * 95 + [40.0] * 5))
    assert tolerant.valid


def test_result_header_and_filename_follow_vllm():
    s = BenchSettings(**BASE, max_concurrency=8)
    out = measure(s, [SampleRequest("p", 8, 4)] * 3, _run([0.1] * 3))
    assert out.result["request_rate"] == "inf" and out.result["model_id"] == "m/tiny"
    assert result_filename(s, "20261121-010203") == "openai-infqps-concurrency8-tiny-20261121-010203.json"
    assert math.isinf(s.request_rate)


def test_saved_json_leaves_per_request_arrays_out_unless_detailed(tmp_path):
    import json

    from servenest.bench.run import save_result

    reqs = [SampleRequest("p", 8, 4)] * 3
    out = measure(BenchSettings(**BASE), reqs, _run([0.1] * 3))
    brief = json.loads(save_result(out, str(tmp_path), "a.json").read_text())
    assert "ttfts" not in brief and "itls" not in brief and "latencies" in brief
    assert brief["servenest"]["valid"] is True
    out.settings.save_detailed = True
    detailed = json.loads(save_result(out, str(tmp_path), "b.json").read_text())
    assert len(detailed["ttfts"]) == 3 and len(detailed["generated_texts"]) == 3


def test_late_sends_say_how_much_of_their_lag_was_the_machine_and_how_much_the_client():
    reqs = [SampleRequest("p", 8, 4)] * 100
    run = _run([0.2] * 95 + [40.0] * 5)
    for r in run.results[95:]:
        # 36 of the 40 ms runnable without a CPU, 3 ms on a CPU with the client's own work.
        r.send_cpu_wait_s, r.send_busy_s = 0.036, 0.003
    out = measure(BenchSettings(**BASE), reqs, run)
    extra = out.result["servenest"]
    assert extra["late_send_cpu_wait_share"] == pytest.approx(0.9)
    assert extra["late_send_client_busy_share"] == pytest.approx(0.075)
    assert ("of the late sends' lag, 90% the client was runnable but had no CPU, held by other "
            "processes") in out.invalid_reasons[0]
    assert out.invalid_reasons[0].endswith("; 8% it was busy with its own work)")
    for r in run.results[95:]:
        # The client blocked its own loop: on a CPU for 38 of the 40 ms, 2 ms without one.
        r.send_cpu_wait_s, r.send_busy_s = 0.002, 0.038
    busy = measure(BenchSettings(**BASE), reqs, run)
    assert "of the late sends' lag, 5% the client was runnable" in busy.invalid_reasons[0]
    assert busy.invalid_reasons[0].endswith("; 95% it was busy with its own work)")
    # The two parts never add up to more than a send's lag.
    for r in run.results[95:]:
        r.send_cpu_wait_s, r.send_busy_s = 0.030, 0.030
    capped = measure(BenchSettings(**BASE), reqs, run).result["servenest"]
    assert capped["late_send_cpu_wait_share"] + capped["late_send_client_busy_share"] == pytest.approx(1.0)
    # Unknown (no schedstat) or no late send: no split, and the reason says nothing of it.
    plain = measure(BenchSettings(**BASE), reqs, _run([0.2] * 95 + [40.0] * 5))
    assert plain.result["servenest"]["late_send_cpu_wait_share"] is None
    assert plain.invalid_reasons[0].endswith("> 10 ms")


def test_a_saved_run_says_why_its_requests_failed(tmp_path):
    import json

    from servenest.bench.run import save_result

    run = _run([0.1] * 4)
    run.results[1].success, run.results[1].error = False, "HTTP 500 Internal Server Error: boom"
    run.results[3].success, run.results[3].error = False, "ServerDisconnectedError: Server disconnected"
    out = measure(BenchSettings(**BASE), [SampleRequest("p", 8, 4)] * 4, run)
    saved = json.loads(save_result(out, str(tmp_path), "r.json").read_text())
    # vLLM's per-request `errors` list ("" for a success), kept even without --save-detailed.
    assert saved["failed"] == 2 and "ttfts" not in saved
    assert saved["errors"] == ["", "HTTP 500 Internal Server Error: boom", "",
                               "ServerDisconnectedError: Server disconnected"]
    assert saved["servenest"]["first_errors"] == [
        {"error": "HTTP 500 Internal Server Error: boom", "count": 1},
        {"error": "ServerDisconnectedError: Server disconnected", "count": 1}]
    assert "2 of 4 requests failed; errors:" in out.summary
