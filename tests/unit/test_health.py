"""servenest/health.py: the staged health gate, against a small fake of vLLM's endpoints."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from servenest.engines import VLLM
from servenest.errors import EngineExitedError, GateFailedError
from servenest.health import (
    GateTarget,
    default_deadline_s,
    log_excerpt,
    parse_metrics,
    run_gate,
)

KEY = "sk-unit-test-key-0123456789"
STAGES = [
    "process alive",
    "/health 200",
    "API key required",
    "/v1/models lists served name",
    "streamed chat completion",
    "/metrics idle",
]


class FakeVLLM:
    """vLLM's OpenAI server as the gate sees it: /health, /v1/models, streamed chat, /metrics.

    Like vLLM with VLLM_API_KEY set, only /v1 routes check the key.
    """

    def __init__(self):
        self.api_key = KEY
        self.served = ["tiny"]
        self.health_codes: list[int] = []  # answered in order, then 200 (or health_default)
        self.health_default = 200
        self.usage = True
        self.tokens = ["Hel", "lo", "!"]
        self.running_sequence: list[float] = []  # /metrics running values in order, then 0
        self.requests: list[tuple[str, str, dict | None]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code: int, body: str, ctype: str = "application/json"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if getattr(fake, "open", False) or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._send(401, json.dumps({"error": "Unauthorized"}))
                return False

            def do_GET(self):
                fake.requests.append(("GET", self.path, None))
                if self.path == "/health":
                    with fake.lock:
                        code = fake.health_codes.pop(0) if fake.health_codes else fake.health_default
                    self._send(code, "")
                elif self.path == "/v1/models":
                    if self._authorized():
                        data = [{"id": name, "object": "model"} for name in fake.served]
                        self._send(200, json.dumps({"object": "list", "data": data}))
                elif self.path == "/metrics":
                    with fake.lock:
                        running = fake.running_sequence.pop(0) if fake.running_sequence else 0.0
                    self._send(200, fake.metrics(running), "text/plain; version=0.0.4")
                else:
                    self._send(404, "{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, body))
                if self.path != "/v1/chat/completions" or not self._authorized():
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # no length: the stream ends when the connection closes
                chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
                chunks += [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in fake.tokens]
                if fake.usage:
                    chunks.append({"choices": [], "usage": {
                        "prompt_tokens": 5, "completion_tokens": len(fake.tokens),
                        "total_tokens": 5 + len(fake.tokens)}})
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @staticmethod
    def metrics(running: float) -> str:
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="tiny"}} {running}\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25\n'
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def target(self, **kw) -> GateTarget:
        kw.setdefault("served_model_name", "tiny")
        kw.setdefault("api_key", KEY)
        kw.setdefault("is_alive", lambda: (True, None))
        return GateTarget(base_url=self.base_url, engine=VLLM, **kw)


@pytest.fixture
def fake():
    server = FakeVLLM()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def gate(target, deadline_s: float = 10.0, **kw):
    return run_gate(target, deadline_s=deadline_s, poll_s=0.02, **kw)


def failed_gate(target, deadline_s: float = 10.0) -> GateFailedError:
    with pytest.raises(GateFailedError) as info:
        gate(target, deadline_s)
    return info.value


# -- parse_metrics --------------------------------------------------------------------------------
def test_parse_metrics_sums_label_sets_and_skips_comments():
    text = (
        "# HELP vllm:num_requests_running running\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="a b"} 3.0\n'
        "\n"
        "vllm:num_requests_waiting 1\n"
        "process_open_fds 17.0\n"
        "broken_line not-a-number\n"
    )
    values = parse_metrics(text)
    assert values == {
        "vllm:num_requests_running": 5.0,
        "vllm:num_requests_waiting": 1.0,
        "process_open_fds": 17.0,
    }


def test_parse_metrics_of_nothing():
    assert parse_metrics("") == {}
    assert parse_metrics("# HELP only comments\n# TYPE x gauge\n") == {}


def test_default_deadline_scales_with_weight_size():
    assert default_deadline_s(0) == pytest.approx(240)
    assert default_deadline_s(688.6) > 60 * 60  # the 671B FP8 checkpoints get over an hour
    assert default_deadline_s(100) > default_deadline_s(10)


# -- passing --------------------------------------------------------------------------------------
def test_gate_passes_all_stages_in_order(fake):
    report = gate(fake.target(), prompt="Say hi.", max_tokens=5)
    assert report.passed is True
    assert [s.name for s in report.stages] == STAGES
    assert all(s.ok for s in report.stages)
    assert report.completion_tokens == 3
    assert report.ttft_ms is not None and report.ttft_ms >= 0
    assert report.kv_cache_usage == pytest.approx(0.25)
    assert report.passed_at == pytest.approx(time.time(), abs=5)
    assert [row["name"] for row in report.table()] == STAGES
    # The completion is a real streamed request for the served name, asking for usage.
    [(_, _, body)] = [r for r in fake.requests if r[0] == "POST"]
    assert body["model"] == "tiny" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5
    assert body["messages"] == [{"role": "user", "content": "Say hi."}]


def test_gate_waits_for_health_and_an_idle_engine(fake):
    fake.health_codes = [503, 503, 503]
    fake.running_sequence = [1.0, 1.0]
    report = gate(fake.target())
    assert report.passed
    assert sum(1 for r in fake.requests if r[1] == "/health") == 4
    assert sum(1 for r in fake.requests if r[1] == "/metrics") == 3


def test_gate_without_a_visible_process_still_passes(fake):
    report = gate(fake.target(is_alive=None))
    assert report.passed
    assert "remote" in report.stages[0].detail


# -- failing ----------------------------------------------------------------------------------------
def test_wrong_key_fails_at_the_models_stage_with_401(fake):
    err = failed_gate(fake.target(api_key="sk-wrong-key-000000"))
    msg = str(err)
    assert "'/v1/models lists served name'" in msg
    assert "401" in msg
    assert "sk-wrong-key-000000" not in msg
    assert [s.name for s in err.stages] == STAGES[:4]
    assert [s.ok for s in err.stages] == [True, True, True, False]


def test_served_name_not_listed_fails(fake):
    fake.served = ["Qwen/Qwen3-8B"]
    err = failed_gate(fake.target())
    assert "'/v1/models lists served name'" in str(err)
    assert "'tiny'" in str(err) and "Qwen/Qwen3-8B" in str(err)


def test_stream_without_a_usage_chunk_fails(fake):
    fake.usage = False
    err = failed_gate(fake.target())
    assert "'streamed chat completion'" in str(err)
    assert "usage" in str(err)
    assert err.stages[-1].name == "streamed chat completion" and not err.stages[-1].ok


def test_stream_without_tokens_fails(fake):
    fake.tokens = []
    err = failed_gate(fake.target())
    assert "'streamed chat completion'" in str(err) and "no tokens" in str(err)


def test_engine_exit_while_waiting_for_health_fails_fast_with_the_log_tail(fake):
    fake.health_default = 503  # /health never comes up
    calls = {"n": 0}

    def is_alive():
        calls["n"] += 1
        return (True, None) if calls["n"] <= 3 else (False, 137)

    target = fake.target(is_alive=is_alive,
                         log_tail=lambda: ["INFO loading weights", "ERROR CUDA out of memory"])
    started = time.monotonic()
    with pytest.raises((EngineExitedError, GateFailedError)) as info:
        gate(target, deadline_s=30)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"took {elapsed:.1f} s; a dead engine must not wait for the deadline"
    msg = str(info.value)
    assert "exited (code 137)" in msg
    assert "ERROR CUDA out of memory" in msg


def test_engine_already_dead_fails_at_the_first_stage(fake):
    target = fake.target(is_alive=lambda: (False, 1), log_tail=lambda: ["Traceback: boom"])
    err = failed_gate(target)
    assert "Traceback: boom" in str(err)
    assert [s.name for s in err.stages] == ["process alive"]
    assert not any(r[1] == "/health" for r in fake.requests)


def test_health_never_200_fails_at_the_deadline(fake):
    fake.health_default = 503
    started = time.monotonic()
    err = failed_gate(fake.target(), deadline_s=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    assert "/health" in str(err)
    assert "503" in str(err)  # the last answer is reported
    assert err.stages[-1].name == "/health 200"


def test_nothing_listening_fails_at_the_deadline(listening_socket):
    sock, port = listening_socket
    sock.close()  # a port nobody listens on: connection refused on every poll
    target = GateTarget(f"http://127.0.0.1:{port}", "tiny", KEY, VLLM, is_alive=lambda: (True, None))
    started = time.monotonic()
    err = failed_gate(target, deadline_s=1.0)
    assert time.monotonic() - started < 3.0
    assert "/health" in str(err)


def test_failure_message_carries_the_log_tail(fake):
    fake.served = []
    err = failed_gate(fake.target(log_tail=lambda: ["engine line 1", "engine line 2"]))
    assert "last engine log lines:\nengine line 1\nengine line 2" in str(err)


# -- log_excerpt --------------------------------------------------------------------------------------
def test_log_excerpt_keeps_earlier_error_lines_before_the_tail():
    lines = ["INFO start", "Traceback (most recent call last):", "ValueError: bad --max-model-len"]
    lines += [f"INFO noise {i}" for i in range(50)]
    excerpt = log_excerpt(lines, last=5)
    assert excerpt[:3] == ["Traceback (most recent call last):", "ValueError: bad --max-model-len", "..."]
    assert excerpt[3:] == [f"INFO noise {i}" for i in range(45, 50)]


def test_log_excerpt_without_errors_is_just_the_tail():
    lines = [f"INFO {i}" for i in range(30)]
    assert log_excerpt(lines, last=12) == lines[-12:]
    assert log_excerpt(["one", "two"]) == ["one", "two"]
    assert log_excerpt([]) == []


def test_log_excerpt_caps_the_error_lines():
    lines = [f"RuntimeError: problem {i}" for i in range(20)] + ["INFO last"]
    excerpt = log_excerpt(lines, last=1, errors=3)
    assert excerpt == [f"RuntimeError: problem {i}" for i in (17, 18, 19)] + ["...", "INFO last"]


def test_log_excerpt_keeps_vllm_error_level_lines():
    # vLLM's log lines read "(Process pid=N) LEVEL MM-DD HH:MM:SS [file:line] message"; its
    # ERROR lines (like its CRITICAL ones) must survive a long tail.
    failed = "(EngineCore pid=8017) ERROR 11-21 05:43:22 [core.py:1043] EngineCore failed to start."
    lines = ["(APIServer pid=8005) INFO 11-21 05:42:54 [api_server.py:1] vLLM API server", failed]
    lines += [f"(APIServer pid=8005) INFO 11-21 05:43:23 [loader.py:9] noise {i}" for i in range(20)]
    assert failed in log_excerpt(lines)


def test_gate_failure_shows_an_early_error_pushed_out_by_a_long_log(fake):
    fake.served = []
    log = ["usage: api_server.py [-h] ...", "api_server.py: error: unrecognized arguments: --bogus"]
    log += [f"INFO line {i}" for i in range(100)]
    err = failed_gate(fake.target(log_tail=lambda: log))
    assert "error: unrecognized arguments: --bogus" in str(err)
    assert "INFO line 99" in str(err)
    assert "INFO line 10\n" not in str(err)


def test_an_endpoint_that_needs_no_key_fails_the_gate(fake):
    fake.open = True  # e.g. an engine that never received its key
    err = failed_gate(fake.target())
    assert "'API key required'" in str(err) and "the endpoint is open" in str(err)


def test_a_serving_endpoint_is_not_required_to_be_idle(fake):
    fake.running_sequence = [3.0] * 1000  # busy with other clients' requests
    report = gate(fake.target(), expect_idle=False)
    assert report.passed and "/metrics idle" not in [s.name for s in report.stages]
