"""The load runner: sends a precomputed schedule the way ``vllm bench serve`` (vLLM 0.32,
``benchmark()`` in ``vllm/benchmarks/serve.py``) does, and records what the client itself did.

- A pre-run check (:func:`check_endpoint`) turns bad input into a :class:`BenchmarkInputError`
  before anything is measured: unreachable endpoint, rejected API key, a model the server does
  not serve, a first request that fails (vLLM's "initial test run").
- ``num_warmups`` copies of the first request run first, under the concurrency cap, unmeasured.
- Then ``gc.freeze()``; ``start = perf_counter()`` (vLLM's ``benchmark_start_time``); request
  ``i`` is handed to its task at ``start + offsets[i]`` (absolute times, no drift), and waits on
  ``asyncio.Semaphore(max_concurrency)`` when there is a cap. ``duration_s`` runs from ``start``
  to after ``gather`` of all requests.
- Client validity data: per request ``scheduled_s`` and ``sent_s`` (send lag), the process CPU
  time over the run, and the peak number of requests in flight. Where Linux tells
  (``/proc/thread-self/schedstat``), also how long the event loop's thread was runnable but
  had no CPU, over the run and within each send's wait: on a machine whose CPUs are busy with
  other processes (a co-located engine, other jobs) a late send is then shown to be the
  machine's lag, not the client's own work.

Everything runs on a uvloop event loop of its own, so :func:`run_load` works from a plain
thread; called from inside a running loop it runs in a helper thread.

With ``workers > 1`` the one global schedule is partitioned round-robin among that many
processes that share the same absolute start (``perf_counter`` is the system-wide monotonic
clock), each with its own client and an equal share of the concurrency cap; their results
merge back in request order. Use it when a single client process runs short of CPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson
import uvloop

from servenest.bench.request import Endpoint, api_url_for, check_backend, make_client
from servenest.bench.types import LoadRun, RequestResult, SampleRequest
from servenest.errors import BenchmarkInputError

T = TypeVar("T")

CHECK_CONNECT_TIMEOUT_S = 10.0
CHECK_REQUEST_TIMEOUT_S = 600.0  # vLLM waits up to 600 s for the endpoint by default
# Sharded start: the workers begin this long after the last one reports ready.
SHARD_START_MARGIN_S = 0.25

# The last part of a wait before a send is spent yielding to the loop, not in a timer.
SPIN_WINDOW_S = 0.0003
# Wake the scheduler with a timerfd (Linux) rather than uvloop's millisecond timers.
PRECISE_TIMER = True
# How long before a timed send the scheduler reads its thread's run-queue wait.
WAIT_LOOK_AHEAD_S = 0.001
# vLLM's aiohttp session allows a request 6 hours; a stalled server must not hang a run.
REQUEST_TIMEOUT_S = 6 * 3600.0

_perf_counter = time.perf_counter


class _CpuWait:
    """The calling thread's cumulative time on a CPU and run-queue wait (time runnable but
    not running), in seconds: fields 1 and 2 of ``/proc/thread-self/schedstat``. Open it in
    the thread to be watched; :meth:`read` is one ``pread`` (a few microseconds). ``create``
    returns None where the kernel does not offer it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def create(cls) -> _CpuWait | None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        watch = cls(fd)
        try:
            watch.read()
        except (OSError, ValueError, IndexError):
            watch.close()
            return None
        return watch

    def read(self) -> tuple[float, float]:
        fields = os.pread(self.fd, 128, 0).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9

    def close(self) -> None:
        os.close(self.fd)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh uvloop loop; from a thread with a running loop,
    in a helper thread (a loop cannot be nested)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="servenest-bench") as pool:
        return pool.submit(run_sync, coro).result()


# -- the pre-run check -------------------------------------------------------------------------


def check_endpoint(
    base_url: str,
    endpoint: str,
    backend: str,
    model_name: str,
    api_key: str | None,
    first_request: SampleRequest,
    *,
    ignore_eos: bool = False,
    extra_body: dict[str, Any] | None = None,
    timeout_s: float = CHECK_REQUEST_TIMEOUT_S,
) -> RequestResult:
    """Raise :class:`BenchmarkInputError` if the run could not work; else return the first
    request's result (it is not part of the measurement)."""
    api_url = api_url_for(base_url, endpoint)
    try:
        check_backend(backend, api_url)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from None
    return run_sync(
        _check_endpoint(base_url, api_url, backend, model_name, api_key, first_request,
                        ignore_eos, extra_body, timeout_s)
    )


def _key_rejected(api_key: str | None, where: str) -> BenchmarkInputError:
    hint = "no API key was given" if not api_key else "check the key"
    return BenchmarkInputError(f"the endpoint rejected the API key ({where}); {hint}")


async def _check_endpoint(
    base_url: str,
    api_url: str,
    backend: str,
    model_name: str,
    api_key: str | None,
    first_request: SampleRequest,
    ignore_eos: bool,
    extra_body: dict[str, Any] | None,
    timeout_s: float,
) -> RequestResult:
    client = make_client(1, base_url)
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        models_url = api_url_for(base_url, "/v1/models")
        try:
            response = await client.get(
                models_url, headers=headers,
                timeout=httpx.Timeout(CHECK_CONNECT_TIMEOUT_S),
            )
        except httpx.InvalidURL as exc:
            raise BenchmarkInputError(f"bad endpoint URL {base_url!r}: {exc}") from None
        except (httpx.TransportError, OSError) as exc:
            reason = str(exc.__cause__ or exc) or type(exc).__name__
            raise BenchmarkInputError(
                f"cannot reach the endpoint at {base_url}: {reason}"
            ) from None
        if response.status_code in (401, 403):
            raise _key_rejected(api_key, f"HTTP {response.status_code} on GET /v1/models")
        if response.status_code == 200:
            try:
                served = [m["id"] for m in orjson.loads(response.content)["data"]]
            except (ValueError, KeyError, TypeError):
                served = None  # not an OpenAI model list; the first request will tell
            if served is not None and model_name not in served:
                raise BenchmarkInputError(
                    f"the endpoint does not serve model {model_name!r}; it serves: "
                    + (", ".join(repr(m) for m in served) or "nothing")
                )
        # Any other status (a server without /v1/models): the first request decides.
        ep = Endpoint(api_url, model_name, backend, api_key=api_key, ignore_eos=ignore_eos,
                      extra_body=extra_body)
        try:
            result = await asyncio.wait_for(ep.send(client, first_request), timeout_s)
        except TimeoutError:
            raise BenchmarkInputError(
                f"the first request to {api_url} got no complete answer in {timeout_s:g} s"
            ) from None
        if not result.success:
            if result.error.startswith(("HTTP 401", "HTTP 403")):
                raise _key_rejected(api_key, f"{result.error.split(':', 1)[0]} on POST {api_url}")
            raise BenchmarkInputError(f"the first request to {api_url} failed: {result.error}")
        return result
    finally:
        await client.aclose()


# -- the run ---------------------------------------------------------------------------------


def run_load(
    base_url: str,
    endpoint: str,
    backend: str,
    model_name: str,
    requests: Sequence[SampleRequest],
    offsets: np.ndarray | Sequence[float],
    *,
    api_key: str | None = None,
    max_concurrency: int | None = None,
    num_warmups: int = 0,
    ignore_eos: bool = False,
    extra_body: dict[str, Any] | None = None,
    workers: int = 1,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> LoadRun:
    """Send ``requests[i]`` at ``offsets[i]`` seconds after the start and return what each saw.

    ``offsets`` are absolute send times from the benchmark start (the schedule module's
    output, vLLM's cumulated ``delay_ts``); 0 means "at once" (request rate inf).
    """
    api_url = api_url_for(base_url, endpoint)
    try:
        check_backend(backend, api_url)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from None
    offs = [float(x) for x in np.asarray(offsets, dtype=float).ravel()]
    if len(offs) != len(requests):
        raise BenchmarkInputError(
            f"{len(requests)} requests but {len(offs)} send offsets; they must pair up"
        )
    if not requests:
        raise BenchmarkInputError("no requests to send")
    if not all(math.isfinite(x) and x >= 0 for x in offs):
        raise BenchmarkInputError("send offsets must be finite and >= 0")
    if max_concurrency is not None and max_concurrency < 1:
        raise BenchmarkInputError(f"max_concurrency must be >= 1, got {max_concurrency}")
    if workers < 1:
        raise BenchmarkInputError(f"workers must be >= 1, got {workers}")
    args = (api_url, model_name, backend, api_key, ignore_eos, extra_body, request_timeout_s)
    if workers > 1 and len(requests) > 1:
        return _run_sharded(args, list(requests), offs, max_concurrency, num_warmups,
                            min(workers, len(requests)))
    return run_sync(_run(args, list(requests), offs, max_concurrency, num_warmups))


async def _warm_up(ep: Endpoint, client, req: SampleRequest, n: int, cap: int | None) -> None:
    if n <= 0:
        return
    sem = asyncio.Semaphore(cap) if cap else contextlib.nullcontext()

    async def one():
        async with sem:
            await ep.send(client, req)

    await asyncio.gather(*(one() for _ in range(n)))


def _freeze_gc() -> None:
    # vLLM's freeze_gc_heap: move everything to the oldest generation, then freeze it, so the
    # collector does not walk the static data (dataset, client) during the run.
    gc.collect(0)
    gc.collect(1)
    gc.collect(2)
    gc.freeze()


async def _sleep_until(target: float) -> None:
    """Sleep until ``perf_counter() >= target``, never waking early, on the loop's own timers.

    uvloop's timers count whole milliseconds (``sleep(d)`` lasts ``round(d)`` ms), so a plain
    ``sleep`` lands up to 0.5 ms early or late, and rounding up makes every send up to 1 ms
    late. Instead: sleep the whole milliseconds that end no more than ``SPIN_WINDOW_S`` before
    the target, then yield to the loop (which keeps serving I/O) until the target passes.
    :class:`_PreciseTimer` does better where the kernel allows.
    """
    delay = target - _perf_counter()
    whole_ms = math.ceil((delay - SPIN_WINDOW_S) * 1000.0)
    if whole_ms > 0:
        await asyncio.sleep(whole_ms / 1000.0)
    while _perf_counter() < target:
        await asyncio.sleep(0)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _PreciseTimer:
    """Absolute-time wake-ups at microsecond precision for the one scheduling coroutine: a
    Linux ``timerfd`` on CLOCK_MONOTONIC (the clock of ``perf_counter``), armed for the exact
    send time and watched by the event loop like a socket. No rounding to milliseconds and no
    busy waiting. :meth:`create` returns None where it is unavailable."""

    CLOCK_MONOTONIC = 1
    TFD_NONBLOCK = 0o4000
    TFD_CLOEXEC = 0o2000000
    TFD_TIMER_ABSTIME = 1

    def __init__(self, loop: asyncio.AbstractEventLoop, libc, fd: int):
        self.loop = loop
        self.libc = libc
        self.fd = fd
        self.waiter: asyncio.Future | None = None
        self.spec = _Itimerspec()
        loop.add_reader(fd, self._fired)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop) -> _PreciseTimer | None:
        if not sys.platform.startswith("linux") or time.get_clock_info(
            "perf_counter"
        ).implementation != "clock_gettime(CLOCK_MONOTONIC)":
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(cls.CLOCK_MONOTONIC, cls.TFD_NONBLOCK | cls.TFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        try:
            return cls(loop, libc, fd)
        except Exception:  # noqa: BLE001 - e.g. a loop that cannot watch this fd
            os.close(fd)
            return None

    def _fired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep_until(self, target: float) -> None:
        sec = int(target)
        value = self.spec.it_value
        value.tv_sec = sec
        value.tv_nsec = min(int((target - sec) * 1e9) + 1, 999_999_999)
        if self.libc.timerfd_settime(self.fd, self.TFD_TIMER_ABSTIME, ctypes.byref(self.spec),
                                     None) != 0:
            await _sleep_until(target)
            return
        self.waiter = self.loop.create_future()
        await self.waiter
        while _perf_counter() < target:  # never early, whatever the clocks did
            await asyncio.sleep(0)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


async def _run(
    args: tuple,
    requests: list[SampleRequest],
    offsets: list[float],
    max_concurrency: int | None,
    num_warmups: int,
    indices: list[int] | None = None,
    start_at=None,
) -> LoadRun:
    api_url, model_name, backend, api_key, ignore_eos, extra_body, timeout_s = args
    ep = Endpoint(api_url, model_name, backend, api_key=api_key, ignore_eos=ignore_eos,
                  extra_body=extra_body)
    client = make_client(max_concurrency, api_url)
    frozen = False
    timer = None
    cpu_wait = _CpuWait.create()
    wait_now = cpu_wait.read if cpu_wait is not None else None
    try:
        await _warm_up(ep, client, requests[0], num_warmups, max_concurrency)
        send = ep.send
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        inflight = 0
        peak = 0

        async def tracked(i: int, req: SampleRequest, scheduled: float, start: float, arrived: float):
            nonlocal inflight, peak
            inflight += 1
            if inflight > peak:
                peak = inflight
            try:
                # A stalled server must not hang the run (vLLM's session allows 6 h).
                async with asyncio.timeout(timeout_s):
                    result = await send(client, req, i, scheduled, start)
            except TimeoutError:
                result = RequestResult(index=i, prompt_len=req.prompt_len, scheduled_s=scheduled,
                                       sent_s=arrived, error=f"no answer within {timeout_s:g} s")
            finally:
                inflight -= 1
            result.arrived_s = arrived
            return result

        async def limited(i: int, req: SampleRequest, scheduled: float, start: float,
                          wait0: tuple[float, float] | None):
            arrived = _perf_counter() - start
            waited = None
            if wait0 is not None:
                ran, waited = (b - a for a, b in zip(wait0, wait_now(), strict=True))
            if sem is None:
                result = await tracked(i, req, scheduled, start, arrived)
            else:
                async with sem:
                    result = await tracked(i, req, scheduled, start, arrived)
            if wait0 is not None:
                result.send_cpu_wait_s, result.send_busy_s = waited, ran
            return result

        if indices is None:
            indices = list(range(len(requests)))
        loop = asyncio.get_running_loop()
        create_task = loop.create_task
        timer = _PreciseTimer.create(loop) if PRECISE_TIMER else None
        sleep_until = timer.sleep_until if timer is not None else _sleep_until
        _freeze_gc()
        frozen = True
        if start_at is not None:  # sharded: every worker starts at the same absolute moment
            start = await start_at(sleep_until)
        else:
            start = _perf_counter()
        cpu0 = time.process_time()
        run_wait0 = wait_now() if wait_now else None
        tasks = []
        # A send's CPU wait (and the loop's own CPU time) is counted from the scheduler's last
        # look at schedstat taken before the send was due: one as it goes to sleep, and a closer one
        # WAIT_LOOK_AHEAD_S before the due time if it wakes for that in time (a wake-up that
        # is itself late must not hide the wait that made it late).
        wait0 = run_wait0
        for i, req, offset in zip(indices, requests, offsets, strict=True):
            due = start + offset
            if offset > 0 and _perf_counter() < due:
                if wait_now:
                    wait0 = wait_now()
                    if _perf_counter() < due - WAIT_LOOK_AHEAD_S:
                        await sleep_until(due - WAIT_LOOK_AHEAD_S)
                        if _perf_counter() < due:
                            wait0 = wait_now()
                await sleep_until(due)
            tasks.append(create_task(limited(i, req, offset, start, wait0 if offset > 0 else None)))
        if timer is not None:
            timer.close()
            timer = None
        results = await asyncio.gather(*tasks)
        duration = _perf_counter() - start
        cpu = time.process_time() - cpu0
        waited = wait_now()[1] - run_wait0[1] if run_wait0 is not None else None
        return LoadRun(results=list(results), duration_s=duration, client_cpu_s=cpu,
                       max_concurrent=peak, cpu_wait_s=waited)
    finally:
        if timer is not None:
            timer.close()
        if cpu_wait is not None:
            cpu_wait.close()
        await client.aclose()
        if frozen:
            gc.unfreeze()


# -- sharding ----------------------------------------------------------------------------------


def _shard_worker(conn, args, requests, offsets, indices, cap, num_warmups) -> None:
    async def start_at(sleep_until) -> float:
        conn.send(("ready", None))
        start = conn.recv()  # the shared absolute start (perf_counter, system-wide monotonic)
        await sleep_until(start)
        return start

    try:
        run = run_sync(_run(args, requests, offsets, cap, num_warmups, indices, start_at))
        conn.send(("done", run))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_sharded(args, requests, offsets, max_concurrency, num_warmups, workers) -> LoadRun:
    ctx = multiprocessing.get_context("spawn")
    caps = [None] * workers
    if max_concurrency:
        # An equal share of the global cap each (at least 1): the sum is the cap.
        workers = min(workers, max_concurrency)
        caps = [max_concurrency // workers + (1 if w < max_concurrency % workers else 0)
                for w in range(workers)]
    procs, conns = [], []
    finished = False
    try:
        for w in range(workers):
            idx = list(range(w, len(requests), workers))
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_shard_worker, daemon=True,
                args=(child, args, [requests[i] for i in idx], [offsets[i] for i in idx], idx,
                      caps[w], -(-num_warmups // workers) if num_warmups else 0),
            )
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        for conn in conns:
            kind, payload = conn.recv()
            if kind == "error":
                raise RuntimeError(f"a load worker failed before the run: {payload}")
        start = _perf_counter() + SHARD_START_MARGIN_S
        for conn in conns:
            conn.send(start)
        runs: list[LoadRun] = []
        for conn in conns:
            kind, payload = conn.recv()
            if kind == "error":
                raise RuntimeError(f"a load worker failed: {payload}")
            runs.append(payload)
        finished = True
    finally:
        for proc in procs:
            if not finished:  # a failed worker leaves the others waiting: stop them now
                proc.kill()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()
    results: list[RequestResult] = [r for run in runs for r in run.results]
    results.sort(key=lambda r: r.index)
    return LoadRun(
        results=results,
        duration_s=max(run.duration_s for run in runs),
        client_cpu_s=sum(run.client_cpu_s for run in runs),
        # Peaks of different workers need not coincide: the sum is an upper bound.
        max_concurrent=sum(run.max_concurrent for run in runs),
        cpu_wait_s=(None if any(run.cpu_wait_s is None for run in runs)
                    else sum(run.cpu_wait_s for run in runs)),
    )
