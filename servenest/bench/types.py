"""The records the benchmark's parts hand each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SampleRequest:
    """One prompt, tokenized before the run (vLLM's ``SampleRequest``)."""

    prompt: str
    prompt_len: int  # client-side token count, with special tokens, as vLLM counts it
    expected_output_len: int  # sent as max_tokens / max_completion_tokens


@dataclass(slots=True)
class RequestResult:
    """What one request saw, with vLLM's timing semantics (seconds, perf_counter based)."""

    index: int
    prompt_len: int
    success: bool = False
    output_tokens: int = 0  # usage.completion_tokens
    ttft: float = 0.0  # first chunk with non-empty choices, minus send time
    # Left out of repr: asyncio reprs a finished main task's result when its Runner exits
    # (signal.getsignal on its SIGINT handler), and a full repr of every request's ITL list
    # and text cost a second of CPU at the end of a long run.
    itl: list[float] = field(default_factory=list, repr=False)  # gaps between later choices chunks
    latency: float = 0.0  # last choices chunk minus send time
    scheduled_s: float = 0.0  # when it should have been sent, from the benchmark start
    sent_s: float = 0.0  # when it was sent, from the benchmark start
    error: str = ""
    # Sent a second time on another connection: the pooled one it first went out on was closed
    # by the server as idle before any response (see request.Endpoint.send).
    resent: bool = False
    generated_text: str = field(default="", repr=False)
    # When the scheduler released it; before sent_s only while it waited for a
    # --max-concurrency slot (that wait is queueing, not the client falling behind).
    arrived_s: float | None = None
    # How long the client's loop thread was runnable but without a CPU (Linux schedstat)
    # from the scheduler's last look before this send was due until its release: covers the
    # send lag. None where unknown or for sends due at once.
    send_cpu_wait_s: float | None = None
    # Over the same span, how long the loop thread was on a CPU: the client's own work
    # (other requests' chunks, its scheduling) that kept this send waiting.
    send_busy_s: float | None = None

    @property
    def send_lag_s(self) -> float:
        return (self.sent_s if self.arrived_s is None else self.arrived_s) - self.scheduled_s

    @property
    def queue_s(self) -> float:
        return 0.0 if self.arrived_s is None else self.sent_s - self.arrived_s


@dataclass(slots=True)
class LoadRun:
    results: list[RequestResult] = field(repr=False)
    duration_s: float  # vLLM's ``benchmark_duration``: first scheduled send to last completion
    client_cpu_s: float  # process CPU time (user + system) spent during the run
    max_concurrent: int = 0
    # Time the client's event loop thread was runnable but had no CPU (Linux schedstat),
    # None where the kernel does not say: a late send with a large wait here is the
    # machine's lag (other processes held the CPUs), not the client's own work.
    cpu_wait_s: float | None = None
