"""The staged health gate: an endpoint is ready only when a real client can use it.

Stages, each timed: the process is alive; ``/health`` answers 200; ``/v1/models``
with the key lists the served name; a streamed chat completion returns tokens and a
usage chunk; ``/metrics`` shows the engine idle. While waiting, every poll also asks
whether the process is still alive, so a crashed engine fails the gate at once, with
its last log lines, instead of at the deadline.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from servenest.engines import EngineAdapter
from servenest.errors import EngineExitedError, GateFailedError

# Loading is I/O bound; 6 s/GB (about 170 MB/s from a cloud disk or page cache) plus a
# fixed allowance for KV profiling, graph capture or compile. 671B FP8 gets about 70 min.
GATE_BASE_S = 240.0
GATE_S_PER_GB = 6.0


def default_deadline_s(weight_gb: float) -> float:
    return GATE_BASE_S + GATE_S_PER_GB * weight_gb


@dataclass
class StageResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class GateReport:
    passed: bool
    stages: list[StageResult] = field(default_factory=list)
    ttft_ms: float | None = None
    completion_tokens: int | None = None
    kv_cache_usage: float | None = None
    passed_at: float | None = None  # time.time() when the last stage passed

    def table(self) -> list[dict]:
        return [asdict(s) for s in self.stages]


@dataclass
class GateTarget:
    base_url: str
    served_model_name: str
    api_key: str
    engine: EngineAdapter
    # Returns (alive, exit_code); None when the gate cannot see the process (remote).
    is_alive: Callable[[], tuple[bool, int | None]] | None = None
    log_tail: Callable[[], list[str]] = lambda: []


class _Gate:
    def __init__(self, target: GateTarget, deadline_s: float, poll_s: float, prompt: str, max_tokens: int):
        self.t = target
        self.deadline = time.monotonic() + deadline_s
        self.deadline_s = deadline_s
        self.poll_s = poll_s
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.report = GateReport(passed=False)
        self.client = httpx.Client(
            base_url=target.base_url, timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False
        )

    # -- helpers --------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.t.api_key}"}

    def _check_alive(self) -> None:
        if self.t.is_alive is None:
            return
        alive, code = self.t.is_alive()
        if not alive:
            lines = "\n".join(log_excerpt(self.t.log_tail()))
            raise EngineExitedError(
                f"the engine process exited (code {code}) before the gate passed; "
                f"last log lines:\n{lines}"
            )

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _fail(self, stage: str, started: float, detail: str) -> GateFailedError:
        self.report.stages.append(StageResult(stage, False, time.monotonic() - started, detail))
        tail = "\n".join(log_excerpt(self.t.log_tail()))
        msg = f"health gate failed at '{stage}': {detail}"
        if tail:
            msg += f"\nlast engine log lines:\n{tail}"
        return GateFailedError(msg, self.report.stages)

    def _stage(self, name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = fn()
        except GateFailedError:
            raise
        except EngineExitedError as exc:
            self.report.stages.append(StageResult(name, False, time.monotonic() - started, "process exited"))
            raise GateFailedError(str(exc), self.report.stages) from None
        except _StageFailure as exc:
            raise self._fail(name, started, str(exc)) from None
        except httpx.HTTPError as exc:
            raise self._fail(name, started, f"{type(exc).__name__}: {exc}") from None
        self.report.stages.append(StageResult(name, True, time.monotonic() - started, detail))

    def _poll(self, what: str, attempt: Callable[[], str | None]) -> str:
        """Run ``attempt`` until it returns a detail string or the deadline passes."""
        last = "no answer yet"
        while True:
            self._check_alive()
            try:
                result = attempt()
            except (httpx.TransportError, _Retry) as exc:
                last = str(exc) or type(exc).__name__
                result = None
            if result is not None:
                return result
            if self._remaining() <= 0:
                raise _StageFailure(f"{what} not reached within {self.deadline_s:.0f} s (last: {last})")
            time.sleep(min(self.poll_s, max(self._remaining(), 0)))

    # -- stages ---------------------------------------------------------------------
    def process_alive(self) -> str:
        if self.t.is_alive is None:
            return "not visible from here (remote engine)"
        self._check_alive()
        return "running"

    def health_ok(self) -> str:
        def attempt() -> str | None:
            r = self.client.get("/health", timeout=2.0)
            if r.status_code == 200:
                return "200"
            raise _Retry(f"/health answered {r.status_code}")

        return self._poll("/health 200", attempt)

    def key_required(self) -> str:
        r = self.client.get("/v1/models")
        if r.status_code != 401:
            raise _StageFailure(
                f"/v1/models without the key answered {r.status_code}, not 401: the endpoint is open"
            )
        return "401 without the key"

    def model_listed(self) -> str:
        r = self.client.get("/v1/models", headers=self._headers())
        if r.status_code == 401:
            raise _StageFailure("/v1/models answered 401: the endpoint rejected the API key")
        if r.status_code != 200:
            raise _StageFailure(f"/v1/models answered {r.status_code}: {r.text[:200]}")
        names = [m.get("id") for m in r.json().get("data", [])]
        if self.t.served_model_name not in names:
            raise _StageFailure(
                f"/v1/models lists {names}, not the served name {self.t.served_model_name!r}"
            )
        return f"lists {self.t.served_model_name}"

    def streamed_completion(self) -> str:
        body = {
            "model": self.t.served_model_name,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        ttft = None
        content_chunks = 0
        usage = None
        with self.client.stream("POST", "/v1/chat/completions", json=body, headers=self._headers()) as r:
            if r.status_code != 200:
                r.read()
                raise _StageFailure(f"chat completion answered {r.status_code}: {r.text[:200]}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    # vLLM streams reasoning models' thinking as `reasoning` (older versions:
                    # `reasoning_content`); those are tokens too.
                    if (delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content")
                            or delta.get("tool_calls")):
                        content_chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - started
                if chunk.get("usage"):
                    usage = chunk["usage"]
        if content_chunks == 0:
            raise _StageFailure("the streamed completion returned no tokens")
        if not usage or not usage.get("completion_tokens"):
            raise _StageFailure("the stream ended without a usage chunk")
        self.report.ttft_ms = ttft * 1000 if ttft is not None else None
        self.report.completion_tokens = usage["completion_tokens"]
        return f"{usage['completion_tokens']} tokens in {content_chunks} chunks, TTFT {self.report.ttft_ms:.0f} ms"

    def metrics_idle(self) -> str:
        def attempt() -> str | None:
            r = self.client.get("/metrics", timeout=5.0)
            if r.status_code != 200:
                raise _Retry(f"/metrics answered {r.status_code}")
            values = parse_metrics(r.text)
            running = values.get(self.t.engine.running_metric)
            waiting = values.get(self.t.engine.waiting_metric)
            if running is None or waiting is None:
                raise _StageFailure(
                    f"/metrics has no {self.t.engine.running_metric} / {self.t.engine.waiting_metric}"
                )
            self.report.kv_cache_usage = values.get(self.t.engine.kv_usage_metric)
            if running == 0 and waiting == 0:
                return f"idle (running 0, waiting 0, KV usage {self.report.kv_cache_usage})"
            raise _Retry(f"running {running:.0f}, waiting {waiting:.0f}")

        return self._poll("an idle engine", attempt)

    def run(self, expect_idle: bool) -> GateReport:
        try:
            self._stage("process alive", self.process_alive)
            self._stage("/health 200", self.health_ok)
            self._stage("API key required", self.key_required)
            self._stage("/v1/models lists served name", self.model_listed)
            self._stage("streamed chat completion", self.streamed_completion)
            if expect_idle:  # right after a launch nothing else can be running
                self._stage("/metrics idle", self.metrics_idle)
        finally:
            self.client.close()
        self.report.passed = True
        self.report.passed_at = time.time()
        return self.report


class _StageFailure(Exception):
    """A stage failed for a reason waiting will not fix."""


class _Retry(Exception):
    """Not yet; poll again."""


_ERROR_LINE = re.compile(r"Error|error:|\bERROR\b|Traceback|Exception|CRITICAL")


def log_excerpt(lines: list[str], last: int = 12, errors: int = 6) -> list[str]:
    """The last lines, plus earlier lines that name an error (an argparse usage dump or a
    long traceback would otherwise push the one line that matters out of view)."""
    head, tail = lines[:-last], lines[-last:]
    flagged = [line for line in head if _ERROR_LINE.search(line)][-errors:]
    return ([*flagged, "..."] if flagged else []) + tail


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: value summed over label sets}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def run_gate(
    target: GateTarget, *, deadline_s: float, poll_s: float = 0.1,
    prompt: str = "Say hello in one word.", max_tokens: int = 8, expect_idle: bool = True,
) -> GateReport:
    """``expect_idle`` is for a fresh launch; a serving endpoint may have traffic."""
    return _Gate(target, deadline_s, poll_s, prompt, max_tokens).run(expect_idle)
