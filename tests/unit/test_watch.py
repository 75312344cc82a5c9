"""servenest/watch.py: one bounded pass against a real (no-op) OpenAI server, and the history."""

from __future__ import annotations

import socket
import time

import pytest

from servenest.engines import VLLM
from servenest.rehearsal.openai_noop import NoopServerProcess
from servenest.spec import WatchSpec
from servenest.topology import RuntimeState
from servenest.watch import (
    DEGRADED,
    DOWN,
    HEALTHY,
    Check,
    History,
    ProbeTarget,
    engine_gauges,
    markdown,
    probe,
    slow_or_full,
)

KEY = "sk-watch-test"


@pytest.fixture(scope="module")
def server():
    with NoopServerProcess("--model", "tiny", "--api-key", KEY) as s:
        yield s


def target(server, key: str = KEY, model: str = "tiny") -> ProbeTarget:
    return ProbeTarget(server.url, model, key, VLLM)


def test_a_serving_endpoint_is_healthy_with_latency_queue_and_kv_figures(server):
    check = probe(target(server), WatchSpec(), lambda: RuntimeState(True, "pid 1"))
    assert check.outcome == HEALTHY, check.reasons
    assert check.latency_ms is not None and check.ttft_ms is not None
    assert check.waiting == 0 and check.running == 0 and check.kv_cache_usage == 0
    assert check.runtime == "pid 1"


def test_a_wrong_key_or_a_missing_model_is_down(server):
    assert probe(target(server, key="sk-wrong"), WatchSpec()).reasons == ["/v1/models with the key answered 401"]
    check = probe(target(server, model="other"), WatchSpec())
    assert check.outcome == DOWN and "not 'other'" in check.reasons[0]


def test_nothing_listening_is_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = probe(ProbeTarget(f"http://127.0.0.1:{port}", "tiny", KEY, VLLM), WatchSpec())
    assert check.outcome == DOWN and "ConnectError" in check.reasons[0]


def test_a_hung_engine_is_down_within_the_time_budget():
    # Accepts connections (the kernel's backlog) but never answers: a hung engine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        check = probe(ProbeTarget(url, "tiny", KEY, VLLM), WatchSpec(timeout_s=1.5))
    assert check.outcome == DOWN and "budget" in check.reasons[0]
    assert check.seconds < 2.5


def test_the_runtime_saying_the_engine_is_gone_is_down_without_asking_http(server):
    check = probe(target(server), WatchSpec(), lambda: RuntimeState(False, "instance i-1 is gone", gone=True))
    assert check.outcome == DOWN and check.reasons == ["instance i-1 is gone"] and check.gone
    assert check.latency_ms is None  # no HTTP request was made


def test_a_restart_by_the_runtime_is_degraded_not_down_while_it_loads():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = ProbeTarget(f"http://127.0.0.1:{port}", "tiny", KEY, VLLM)
    restarting = lambda: RuntimeState(True, "container vllm running", restarts=3)  # noqa: E731
    check = probe(t, WatchSpec(), restarting, previous=Check(at=0, outcome=HEALTHY, restarts=2))
    assert check.outcome == DEGRADED and "restarted by its runtime" in check.reasons[0] and check.grace
    # The next pass, with no new restart and still not serving: down, for the heal ladder.
    assert probe(t, WatchSpec(), restarting, previous=check).outcome == DOWN
    # Nor does a crash loop caught loading on every pass get a second pass of grace.
    again = lambda: RuntimeState(True, "container vllm running", restarts=9)  # noqa: E731
    assert probe(t, WatchSpec(), again, previous=check).outcome == DOWN


def test_a_restart_that_came_back_is_degraded_and_a_runtime_api_error_is_no_verdict(server):
    check = probe(target(server), WatchSpec(), lambda: RuntimeState(True, "running", restarts=1))
    assert check.outcome == DEGRADED and "since the last check" in check.reasons[0]

    def broken() -> RuntimeState:
        raise ConnectionError("Cloud Assistant unreachable")

    check = probe(target(server), WatchSpec(), broken)
    assert check.outcome == DEGRADED and "runtime state unknown" in check.reasons[0]


def test_queue_depth_kv_cache_and_latency_over_their_limits_are_degraded():
    settings = WatchSpec(max_waiting=4, max_kv_cache_usage=0.9, max_latency_ms=500)
    ok = Check(at=0, outcome=HEALTHY, waiting=4, kv_cache_usage=0.9, latency_ms=500)
    assert slow_or_full(ok, VLLM, settings) == []
    bad = Check(at=0, outcome=HEALTHY, waiting=5, kv_cache_usage=0.97, latency_ms=800)
    assert slow_or_full(bad, VLLM, settings) == [
        "5 requests waiting (more than 4)", "KV cache 97% used (more than 90%)",
        "1-token completion took 800 ms (more than 500)"]
    assert slow_or_full(Check(at=0, outcome=HEALTHY), VLLM, settings) == [
        "/metrics has no vllm:num_requests_waiting"]


def test_gauges_come_from_the_engines_metrics_and_old_vllm_names_its_kv_gauge_differently():
    from servenest.engines import SGLANG

    new = {"vllm:num_requests_waiting": 3.0, "vllm:num_requests_running": 2.0, "vllm:kv_cache_usage_perc": 0.5}
    assert engine_gauges(new, VLLM) == (3.0, 2.0, 0.5)
    old = {"vllm:num_requests_waiting": 1.0, "vllm:num_requests_running": 0.0, "vllm:gpu_cache_usage_perc": 0.7}
    assert engine_gauges(old, VLLM) == (1.0, 0.0, 0.7)
    assert engine_gauges({"sglang:num_queue_reqs": 4.0, "sglang:token_usage": 0.2}, SGLANG) == (4.0, None, 0.2)


def test_history_keeps_incidents_and_computes_uptime_over_24h_and_7d():
    h = History()
    t0 = 1_000_000.0
    h.record(Check(at=t0, outcome=HEALTHY))
    h.record(Check(at=t0 + 3600, outcome=DOWN, reasons=["/health answered 503"]))
    h.record(Check(at=t0 + 3900, outcome=DOWN, reasons=["still"]))  # same incident
    h.record(Check(at=t0 + 4200, outcome=DEGRADED, reasons=["slow"]))  # ends it
    assert len(h.incidents) == 1
    assert h.incidents[0] == {"start": t0 + 3600, "end": t0 + 4200, "reasons": ["/health answered 503"]}
    now = t0 + 7200
    assert h.uptime(86_400, now) == pytest.approx(1 - 600 / 7200)
    h.record(Check(at=t0 + 8 * 86_400, outcome=HEALTHY))
    assert h.incidents == []  # older than 7 days
    assert h.uptime(86_400, t0 + 8 * 86_400 + 60) == 1.0
    assert History.from_dict(h.to_dict()) == h
    assert h.last_check == Check(at=t0 + 8 * 86_400, outcome=HEALTHY)


def test_an_open_incident_counts_until_now_and_a_healthy_check_clears_failed():
    h = History(failed={"at": 5.0, "reason": "gave up"})
    h.record(Check(at=100.0, outcome=DOWN, reasons=["x"]))
    assert h.uptime(86_400, 200.0) == 0.0
    assert h.failed is not None
    h.record(Check(at=300.0, outcome=HEALTHY))
    assert h.failed is None and h.uptime(86_400, 400.0) == pytest.approx(1 - 200 / 300)


def test_reprovisions_are_counted_per_24_hours():
    now = time.time()
    h = History(reprovisions=[now - 90_000, now - 3600, now - 60])
    assert h.reprovisions_left(2, now) == 0
    assert h.reprovisions_left(3, now) == 1


def test_the_artifact_shows_last_check_latency_uptime_and_last_incident():
    h = History()
    h.record(Check(at=1000.0, outcome=DOWN, reasons=["/health answered 503"]))
    h.record(Check(at=1300.0, outcome=HEALTHY, latency_ms=42.0, ttft_ms=40.0, waiting=0, running=1,
                   kv_cache_usage=0.25, runtime="pid 7"))
    text = markdown("qwen3-8b", h, 1600.0)
    assert "**healthy**" in text and "42 ms" in text and "25.00%" in text and "pid 7" in text
    assert "50.00% / 50.00%" in text  # down 300 s of 600 s watched
    assert "Last incident: down from 1970-01-01 00:16:40 UTC to 1970-01-01 00:21:40 UTC: /health answered 503" in text


def test_a_runtime_fault_while_clients_are_served_is_degraded_and_while_not_down(server):
    # e.g. one of several replicas crash-looping behind the load balancer
    broken = lambda: RuntimeState(False, "pod p-1 CrashLoopBackOff", restarts=4)  # noqa: E731
    check = probe(target(server), WatchSpec(), broken, previous=Check(at=0, outcome=HEALTHY, restarts=4))
    assert check.outcome == DEGRADED and check.reasons == ["pod p-1 CrashLoopBackOff"]
    check = probe(target(server, key="sk-wrong"), WatchSpec(), broken)
    assert check.outcome == DOWN and check.reasons[0] == "pod p-1 CrashLoopBackOff"
