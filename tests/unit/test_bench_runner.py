"""The load runner and the pre-run check, against the no-op server (subprocesses on free
loopback ports)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from servenest.bench.runner import check_endpoint, run_load
from servenest.bench.types import SampleRequest
from servenest.errors import BenchmarkInputError
from servenest.rehearsal.openai_noop import NoopServerProcess

REQ = SampleRequest(prompt="hello there", prompt_len=3, expected_output_len=4)
COMPLETIONS = ("/v1/completions", "openai")


@pytest.fixture(scope="module")
def server():
    with NoopServerProcess("--model", "tiny", "--model", "other") as s:
        yield s


@pytest.fixture(scope="module")
def slow():
    # Each response lasts about 4 x 5 ms, so requests overlap.
    with NoopServerProcess("--model", "tiny", "--tokens", "4", "--token-delay-ms", "5") as s:
        yield s


@pytest.fixture(scope="module")
def keyed():
    with NoopServerProcess("--model", "tiny", "--api-key", "sk-right", "--fail-every", "3") as s:
        yield s


def generations(server) -> int:
    with urllib.request.urlopen(f"{server.url}/debug/last", timeout=5) as resp:
        return json.loads(resp.read())["generations"]


def load(server, n=20, offsets=None, endpoint=COMPLETIONS, **kw):
    offsets = np.zeros(n) if offsets is None else offsets
    return run_load(server.url, endpoint[0], endpoint[1], "tiny", [REQ] * n, offsets, **kw)


def test_run_at_rate_inf(server):
    before = generations(server)
    run = load(server, 40, num_warmups=3, max_concurrency=8)
    assert generations(server) - before == 43  # warm-ups are sent but not reported
    assert [r.index for r in run.results] == list(range(40))
    assert all(r.success and r.output_tokens == 4 and len(r.itl) == 3 for r in run.results)
    assert all(r.scheduled_s == 0.0 and r.sent_s >= 0.0 for r in run.results)
    last_done = max(r.sent_s + r.latency for r in run.results)
    assert last_done <= run.duration_s < 5
    assert 0 < run.client_cpu_s < 5
    assert 1 <= run.max_concurrent <= 8


def test_chat_backend(server):
    run = load(server, 5, endpoint=("/v1/chat/completions", "openai-chat"))
    assert all(r.success and r.output_tokens == 4 for r in run.results)


def test_concurrency_cap_is_respected(slow):
    capped = load(slow, 24, max_concurrency=3)
    assert capped.max_concurrent == 3
    assert all(r.success for r in capped.results)
    # Without a cap, all of a burst is in flight at once.
    uncapped = load(slow, 24)
    assert uncapped.max_concurrent > 3


def test_sends_happen_at_their_scheduled_offsets(server):
    offsets = np.arange(30) * 0.01 + 0.005
    run = load(server, 30, offsets=offsets, num_warmups=2)
    lags = np.array([r.send_lag_s for r in run.results])
    assert [r.scheduled_s for r in run.results] == pytest.approx(list(offsets))
    assert lags.min() >= 0  # never early
    assert np.median(lags) < 0.003 and lags.max() < 0.05, lags
    assert run.duration_s >= offsets[-1]


def test_failures_are_counted_and_the_run_completes(keyed):
    run = run_load(keyed.url, *COMPLETIONS, "tiny", [REQ] * 30, np.zeros(30),
                   api_key="sk-right", max_concurrency=4)
    failed = [r for r in run.results if not r.success]
    assert len(failed) == 10  # every third generation request
    assert all(r.error.startswith("HTTP 500") for r in failed)

    run = run_load(keyed.url, *COMPLETIONS, "tiny", [REQ] * 5, np.zeros(5), api_key="sk-wrong")
    assert all(not r.success and r.error.startswith("HTTP 401") for r in run.results)


def test_runs_when_called_from_inside_an_event_loop(server):
    async def caller():
        return load(server, 3)

    run = asyncio.run(caller())
    assert all(r.success for r in run.results)


def test_runs_from_a_thread_without_a_loop(server):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("run", load(server, 3)))
    thread.start()
    thread.join(timeout=30)
    assert all(r.success for r in box["run"].results)


def test_sharded_run_keeps_the_global_schedule(server):
    offsets = np.arange(12) * 0.01
    run = load(server, 12, offsets=offsets, workers=2, max_concurrency=4)
    assert [r.index for r in run.results] == list(range(12))
    assert all(r.success for r in run.results)
    assert [r.scheduled_s for r in run.results] == pytest.approx(list(offsets))
    assert max(r.send_lag_s for r in run.results) < 0.05
    assert run.max_concurrent <= 4


def test_bad_run_input_is_refused_before_sending(server):
    with pytest.raises(BenchmarkInputError, match="pair up"):
        run_load(server.url, *COMPLETIONS, "tiny", [REQ] * 3, np.zeros(2))
    with pytest.raises(BenchmarkInputError, match="chat/completions"):
        run_load(server.url, "/v1/completions", "openai-chat", "tiny", [REQ], [0.0])


# -- the pre-run check ---------------------------------------------------------------------------


def test_check_passes_and_returns_the_first_result(keyed):
    r = check_endpoint(keyed.url, *COMPLETIONS, "tiny", "sk-right", REQ)
    assert r.success


def test_check_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(BenchmarkInputError, match="cannot reach the endpoint"):
            check_endpoint(url, *COMPLETIONS, "tiny", None, REQ)


@pytest.mark.parametrize(("key", "hint"), [("sk-wrong", "check the key"),
                                            (None, "no API key was given")])
def test_check_rejected_key(keyed, key, hint):
    with pytest.raises(BenchmarkInputError, match="the endpoint rejected the API key") as err:
        check_endpoint(keyed.url, *COMPLETIONS, "tiny", key, REQ)
    assert hint in str(err.value)


def test_check_unknown_model_lists_served_models(server):
    with pytest.raises(BenchmarkInputError, match="does not serve model 'tyni'") as err:
        check_endpoint(server.url, *COMPLETIONS, "tyni", None, REQ)
    assert "'tiny', 'other'" in str(err.value)


def test_check_failing_first_request(server):
    with pytest.raises(BenchmarkInputError, match="first request .* failed: HTTP 500"):
        check_endpoint(server.url, *COMPLETIONS, "tiny", None, SampleRequest("__500__", 1, 2))
    with pytest.raises(BenchmarkInputError, match="failed: HTTP 404"):
        check_endpoint(server.url, "/v2/completions", "openai", "tiny", None, REQ)


def test_check_backend_endpoint_mismatch(server):
    with pytest.raises(BenchmarkInputError, match="chat/completions"):
        check_endpoint(server.url, "/v1/completions", "openai-chat", "tiny", None, REQ)


def test_a_stalled_server_fails_the_request_instead_of_hanging_the_run():
    with NoopServerProcess("--model", "tiny", "--ttft-ms", "3000") as stalled:
        run = run_load(stalled.url, *COMPLETIONS, "tiny", [REQ] * 2, np.zeros(2), request_timeout_s=0.3)
    assert [r.success for r in run.results] == [False, False]
    assert all("no answer within 0.3 s" in r.error for r in run.results)
    assert run.duration_s < 2.0


def test_waiting_for_a_concurrency_slot_is_queueing_not_send_lag(slow):
    # 12 requests at once through 1 slot: each waits ~20 ms per request ahead of it.
    run = run_load(slow.url, *COMPLETIONS, "tiny", [REQ] * 12, np.zeros(12), max_concurrency=1)
    assert all(r.success for r in run.results)
    assert max(r.send_lag_s for r in run.results) < 0.05
    assert max(r.queue_s for r in run.results) > 0.1


@pytest.mark.skipif(not Path("/proc/thread-self/schedstat").exists(), reason="Linux schedstat")
def test_cpu_wait_is_recorded_for_the_run_and_for_each_timed_send(server):
    # The evidence that tells a busy machine from a slow client: how long the loop thread was
    # runnable without a CPU, over the run and within each send's wait.
    offsets = np.concatenate([np.zeros(2), 0.01 + np.arange(8) * 0.005])
    run = load(server, 10, offsets=offsets)
    assert run.cpu_wait_s is not None and 0 <= run.cpu_wait_s <= run.duration_s
    due_at_once = [r.send_cpu_wait_s for r in run.results[:2]]
    timed = [r.send_cpu_wait_s for r in run.results[2:]]
    assert due_at_once == [None, None]
    assert all(w is not None and 0 <= w <= run.duration_s for w in timed)
    assert all(r.send_busy_s is not None and 0 <= r.send_busy_s <= run.duration_s
               for r in run.results[2:])
