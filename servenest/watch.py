"""One watch pass over a registered endpoint, and the check history it keeps.

A pass is cheap and bounded in time (``WatchSpec.timeout_s`` for everything): the
runtime's own view (process, container or pods, through ``Topology.runtime_state``), then
``/health``, ``/v1/models`` with the key, one streamed 1-token completion, and the engine's
Prometheus metrics (queue depth, KV-cache use). The outcome is ``healthy``, ``degraded``
(serving, but slow, queued up, nearly out of KV cache, or restarted by its runtime) or
``down`` (a client cannot be served), with the reasons.

The history keeps the last check and the incidents (spans of ``down``), pruned to 7 days,
which is enough for uptime over 24 h and 7 d without storing every pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from servenest.engines import EngineAdapter
from servenest.health import parse_metrics
from servenest.spec import VLLM_OLD_KV_GAUGE, WatchSpec
from servenest.topology.base import RuntimeState

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
OUTCOMES = (HEALTHY, DEGRADED, DOWN)
DAY_S = 86_400.0
KEEP_S = 7 * DAY_S
MAX_INCIDENTS = 500  # a flapping endpoint: keep the newest (the record must stay small)


@dataclass
class Check:
    at: float
    outcome: str
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long the pass took
    latency_ms: float | None = None  # the 1-token streamed completion, request to last byte
    ttft_ms: float | None = None
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    runtime: str = ""
    restarts: int = 0
    gone: bool = False  # the machines are gone (only a reprovision helps)
    grace: bool = False  # not serving, but its runtime restarted it: given one pass to load


@dataclass
class ProbeTarget:
    base_url: str
    served_model_name: str
    api_key: str
    engine: EngineAdapter


class _Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def timeout(self, cap: float) -> httpx.Timeout:
        t = max(min(cap, self.left()), 0.05)
        return httpx.Timeout(t, connect=min(t, 2.0))


def probe(
    target: ProbeTarget, settings: WatchSpec, runtime: Callable[[], RuntimeState] | None = None,
    previous: Check | None = None,
) -> Check:
    """One pass; never raises for what it finds (a broken endpoint is an outcome).
    ``previous``: the last pass, whose restart count tells a restart by the runtime."""
    previous_restarts = previous.restarts if previous else 0
    started = time.monotonic()
    budget = _Budget(settings.timeout_s)
    check = Check(at=time.time(), outcome=HEALTHY)
    down: list[str] = []
    degraded: list[str] = []
    state = None
    if runtime is not None:
        try:
            state = runtime()
        except Exception as exc:  # noqa: BLE001 - the runtime's API failing is no verdict on the engine
            degraded.append(f"runtime state unknown: {type(exc).__name__}: {exc}")
    if state is not None:
        check.runtime, check.restarts, check.gone = state.detail, state.restarts, state.gone
    if state is not None and state.gone:
        down.append(state.detail or "the machines are gone")
    else:
        _http_checks(target, settings, budget, check, down, degraded)
        if state is not None and not state.serving:
            # Clients are answered (other replicas behind the load balancer, say) while the
            # runtime reports a broken part: degraded. Not answered: the runtime says why.
            (down or degraded).insert(0, state.detail or "the runtime says the engine is not running")
    if (down and state is not None and state.serving and state.restarts > previous_restarts
            and not (previous and previous.grace)):
        # The runtime restarted the engine since the last pass and it is still loading: its
        # own restart is under way, worth one pass of waiting (not two: a crash loop that is
        # caught loading every time must still reach the heal ladder).
        degraded += [f"restarted by its runtime ({state.restarts} restarts); not serving yet: "
                     + "; ".join(down)]
        down = []
        check.grace = True
    elif state is not None and state.restarts > previous_restarts and not down:
        degraded.append(f"restarted by its runtime since the last check ({state.restarts} restarts in all)")
    check.reasons = down or degraded
    check.outcome = DOWN if down else DEGRADED if degraded else HEALTHY
    check.seconds = round(time.monotonic() - started, 3)
    return check


def _http_checks(target: ProbeTarget, settings: WatchSpec, budget: _Budget, check: Check,
                 down: list[str], degraded: list[str]) -> None:
    headers = {"Authorization": f"Bearer {target.api_key}"}
    with httpx.Client(base_url=target.base_url, trust_env=False) as client:
        try:
            r = client.get("/health", timeout=budget.timeout(5.0))
            if r.status_code != 200:
                down.append(f"/health answered {r.status_code}")
                return
            r = client.get("/v1/models", headers=headers, timeout=budget.timeout(5.0))
            if r.status_code != 200:
                down.append(f"/v1/models with the key answered {r.status_code}")
                return
            names = [m.get("id") for m in r.json().get("data", [])]
            if target.served_model_name not in names:
                down.append(f"/v1/models lists {names}, not {target.served_model_name!r}")
                return
            _completion(client, target, headers, budget, check, down)
            if down:
                return
        except httpx.TimeoutException as exc:
            down.append(f"no answer within the watch's {settings.timeout_s:.0f} s budget ({type(exc).__name__})")
            return
        except (httpx.HTTPError, ValueError) as exc:
            down.append(f"{type(exc).__name__}: {exc}")
            return
        try:  # metrics only qualify a serving engine: their absence is degraded, not down
            r = client.get("/metrics", timeout=budget.timeout(5.0))
            if r.status_code != 200:
                degraded.append(f"/metrics answered {r.status_code}")
                return
        except httpx.HTTPError as exc:
            degraded.append(f"/metrics: {type(exc).__name__}")
            return
    check.waiting, check.running, check.kv_cache_usage = engine_gauges(parse_metrics(r.text), target.engine)
    degraded += slow_or_full(check, target.engine, settings)


def engine_gauges(values: dict[str, float], engine: EngineAdapter) -> tuple[float | None, ...]:
    """(waiting, running, KV-cache use) from the engine's metrics; vLLM before 0.9 (the ECS
    default image) names its KV gauge vllm:gpu_cache_usage_perc."""
    kv = values.get(engine.kv_usage_metric)
    if kv is None and engine.kind == "vllm":
        kv = values.get(VLLM_OLD_KV_GAUGE)
    return values.get(engine.waiting_metric), values.get(engine.running_metric), kv


def slow_or_full(check: Check, engine: EngineAdapter, settings: WatchSpec) -> list[str]:
    """Why a serving engine counts as degraded: queue, KV cache, latency."""
    out = []
    if check.waiting is None:
        out.append(f"/metrics has no {engine.waiting_metric}")
    elif check.waiting > settings.max_waiting:
        out.append(f"{check.waiting:.0f} requests waiting (more than {settings.max_waiting})")
    if check.kv_cache_usage is not None and check.kv_cache_usage > settings.max_kv_cache_usage:
        out.append(f"KV cache {check.kv_cache_usage:.0%} used (more than {settings.max_kv_cache_usage:.0%})")
    if check.latency_ms is not None and check.latency_ms > settings.max_latency_ms:
        out.append(f"1-token completion took {check.latency_ms:.0f} ms (more than {settings.max_latency_ms:.0f})")
    return out


def _completion(client: httpx.Client, target: ProbeTarget, headers: dict, budget: _Budget,
                check: Check, down: list[str]) -> None:
    body = {"model": target.served_model_name, "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1, "temperature": 0, "stream": True}
    started = time.perf_counter()
    chunks = 0
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers,
                       timeout=budget.timeout(budget.left())) as r:
        if r.status_code != 200:
            r.read()
            down.append(f"streamed completion answered {r.status_code}: {r.text[:120]}")
            return
        for line in r.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content"):
                    chunks += 1
                    if check.ttft_ms is None:
                        check.ttft_ms = round((time.perf_counter() - started) * 1000, 1)
    check.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    if chunks == 0:
        down.append("the streamed completion returned no tokens")


# -- history ----------------------------------------------------------------------------------
@dataclass
class History:
    """What the watch remembers about one deployment between passes."""

    since: float | None = None  # first check in the kept window
    last: dict | None = None  # the last Check, as a dict
    incidents: list[dict] = field(default_factory=list)  # {start, end, reasons}; end None while down
    reprovisions: list[float] = field(default_factory=list)  # times the heal ladder reprovisioned
    failed: dict | None = None  # {at, reason} once heal gave up; cleared by a healthy check

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> History:
        data = data or {}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def last_check(self) -> Check | None:
        return Check(**{k: v for k, v in self.last.items() if k in Check.__dataclass_fields__}) if self.last else None

    def record(self, check: Check) -> None:
        self.since = self.since or check.at
        open_incident = self.incidents[-1] if self.incidents and self.incidents[-1]["end"] is None else None
        if check.outcome == DOWN and open_incident is None:
            self.incidents.append({"start": check.at, "end": None, "reasons": [r[:300] for r in check.reasons]})
        elif check.outcome != DOWN and open_incident is not None:
            open_incident["end"] = check.at
        if check.outcome == HEALTHY:
            self.failed = None
        self.last = asdict(check)
        self._prune(check.at)

    def _prune(self, now: float) -> None:
        cutoff = now - KEEP_S
        self.incidents = [i for i in self.incidents if i["end"] is None or i["end"] > cutoff][-MAX_INCIDENTS:]
        self.reprovisions = [t for t in self.reprovisions if t > now - DAY_S]
        if self.since is not None and self.since < cutoff:
            self.since = cutoff

    def uptime(self, window_s: float, now: float) -> float | None:
        """Fraction of the watched part of the last ``window_s`` not inside an incident."""
        if self.since is None:
            return None
        start = max(now - window_s, self.since)
        span = now - start
        if span <= 0:
            return None
        down = sum(max(0.0, min(i["end"] or now, now) - max(i["start"], start)) for i in self.incidents)
        return max(0.0, 1.0 - down / span)

    def reprovisions_left(self, per_day: int, now: float) -> int:
        return per_day - sum(1 for t in self.reprovisions if t > now - DAY_S)

    def last_incident(self) -> dict | None:
        return self.incidents[-1] if self.incidents else None


def markdown(name: str, history: History, now: float) -> str:
    """The watch-<name> artifact: last check, latency, uptime, last incident."""
    last = history.last or {}
    lines = [f"# Watch of {name}", ""]
    if history.failed:
        lines += [f"**Marked failed** at {_when(history.failed['at'])}: {history.failed['reason']}", ""]
    if last:
        lines += [
            "| | |", "|---|---|",
            f"| Last check | **{last['outcome']}** at {_when(last['at'])} ({last['seconds']:.2f} s) |",
            f"| 1-token completion | {_ms(last.get('latency_ms'))} (TTFT {_ms(last.get('ttft_ms'))}) |",
            f"| Queue / running | {_num(last.get('waiting'))} waiting, {_num(last.get('running'))} running |",
            f"| KV cache | {_pct(last.get('kv_cache_usage'))} |",
            f"| Runtime | {last.get('runtime') or '-'} (restarts {last.get('restarts', 0)}) |",
            f"| Uptime 24 h / 7 d | {_pct(history.uptime(DAY_S, now))} / {_pct(history.uptime(KEEP_S, now))} |",
        ]
        if last.get("reasons"):
            lines += ["", "Reasons: " + "; ".join(last["reasons"])]
    incident = history.last_incident()
    lines += ["", "Last incident: " + (
        "none in 7 days" if incident is None else
        f"down from {_when(incident['start'])} to "
        f"{_when(incident['end']) if incident['end'] else 'now'}: {'; '.join(incident['reasons'])}")]
    return "\n".join(lines) + "\n"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"
