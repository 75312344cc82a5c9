"""Test equipment: an OpenAI-style streaming server that does no work, so that what a load test
measures is the client.

    python -m servenest.rehearsal.openai_noop --port 8100 [--tokens N] [--token-delay-ms D]

Raw asyncio protocol (uvloop when installed), HTTP/1.1 keep-alive, chunked SSE like vLLM:

- ``POST /v1/completions`` and ``/v1/chat/completions``: N token events (N = ``--tokens``,
  else the request's ``max_tokens`` / ``max_completion_tokens``, else 16), then a usage event
  (``choices: []``, ``completion_tokens = N``, ``prompt_tokens`` = whitespace words of the
  prompt) and ``data: [DONE]``. ``--ttft-ms`` delays the first event, ``--token-delay-ms``
  each later one. ``--reasoning-chunks K`` makes the first K chat deltas ``reasoning_content``.
- ``GET /v1/models`` (the ``--model`` names), ``GET /health``, and ``GET /debug/last``: the
  last POST as JSON (``path``, lower-cased ``headers``, parsed ``body``) plus a request count.
- ``GET /metrics``: Prometheus text with vLLM's ``vllm:num_requests_running`` (generation
  requests in flight, per served name), ``vllm:num_requests_waiting`` (always 0) and
  ``vllm:kv_cache_usage_perc`` (0), so the health gate's idle check works against it.
- Failures: ``--api-key K`` (or ``--api-key-file PATH``, which keeps the key off the command
  line) guards ``/v1/*`` with 401 like vLLM's ``--api-key``; ``--fail-every
  K`` answers every K-th generation request with 500; a prompt containing ``__500__``,
  ``__401__``, ``__reset__`` (connection dropped mid-stream), ``__malformed__`` (an event that is
  not JSON) or ``__nochunk__`` (200 with only ``[DONE]``) fails that one request.
- ``--keep-alive-s S`` closes a connection idle for S seconds after its last response, as
  uvicorn (vLLM's and SGLang's server) does after 5 s: the race a pooling client must handle.

It prints ``noop-server listening on http://HOST:PORT`` once it accepts connections (``--port
0`` picks a free port). :func:`spawn` runs it as a subprocess for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

DEFAULT_TOKENS = 16
TOKEN_TEXT = " tok"
READY_PREFIX = "noop-server listening on "

_REASONS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 400: b"Bad Request",
            405: b"Method Not Allowed", 500: b"Internal Server Error"}
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_DONE = b"data: [DONE]\n\n"
_END = b"0\r\n\r\n"


@dataclass
class Config:
    tokens: int | None = None
    token_delay_s: float = 0.0
    ttft_s: float = 0.0
    api_key: str | None = None
    models: list[str] = field(default_factory=lambda: ["noop"])
    fail_every: int = 0
    reasoning_chunks: int = 0
    keep_alive_s: float = 0.0  # 0: idle connections stay open


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


class Server:
    def __init__(self, config: Config):
        self.config = config
        self.generations = 0
        self.running = dict.fromkeys(config.models, 0)  # generation requests in flight
        self.last: dict | None = None
        self._cache: dict[tuple, bytes] = {}

    # -- responses ---------------------------------------------------------------------------

    def token_event(self, chat: bool, model: str, i: int, last: bool) -> bytes:
        key = (chat, model, chat and i == 0, i < self.config.reasoning_chunks, last)
        event = self._cache.get(key)
        if event is None:
            finish = "length" if last else None
            if chat:
                delta = {"role": "assistant"} if i == 0 else {}
                if i < self.config.reasoning_chunks:
                    delta["reasoning_content"] = TOKEN_TEXT
                else:
                    delta["content"] = TOKEN_TEXT
                obj = {"id": "chatcmpl-noop", "object": "chat.completion.chunk", "created": 0,
                       "model": model, "choices": [{"index": 0, "delta": delta,
                                                    "logprobs": None, "finish_reason": finish}]}
            else:
                obj = {"id": "cmpl-noop", "object": "text_completion", "created": 0,
                       "model": model, "choices": [{"index": 0, "text": TOKEN_TEXT,
                                                    "logprobs": None, "finish_reason": finish}]}
            event = self._cache[key] = _chunk(_event(obj))
        return event

    def token_run(self, chat: bool, model: str, n: int) -> bytes:
        """All N token events (HTTP chunks), cached: the no-delay path writes them at once."""
        key = ("run", chat, model, n)
        run = self._cache.get(key)
        if run is None:
            run = b"".join(self.token_event(chat, model, i, i == n - 1) for i in range(n))
            if len(self._cache) < 4096:
                self._cache[key] = run
        return run

    @staticmethod
    def usage_event(chat: bool, model: str, prompt_tokens: int, n: int) -> bytes:
        obj = {"id": "chatcmpl-noop" if chat else "cmpl-noop",
               "object": "chat.completion.chunk" if chat else "text_completion",
               "created": 0, "model": model, "choices": [],
               "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n,
                         "completion_tokens": n}}
        return _chunk(_event(obj))

    def metrics(self) -> bytes:
        lines = []
        for name, help_text in (("vllm:num_requests_running", "Requests in model execution batches."),
                                ("vllm:num_requests_waiting", "Requests waiting to be processed."),
                                ("vllm:kv_cache_usage_perc", "KV-cache usage (1 = 100 percent).")):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for model, running in self.running.items():
                value = running if name == "vllm:num_requests_running" else 0
                lines.append(f'{name}{{model_name="{_label(model)}"}} {float(value)}')
        return ("\n".join(lines) + "\n").encode()


def _label(value: str) -> str:
    """A Prometheus label value (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _simple(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), content_type, len(body), body))


def _error(status: int, message: str) -> bytes:
    return _simple(status, _dumps({"error": {"message": message, "code": status}}))


class _Connection(asyncio.Protocol):
    __slots__ = ("server", "transport", "buf", "busy", "pending", "idle_timer")

    def __init__(self, server: Server):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a delayed stream is being written; later requests wait
        self.pending: list[tuple] = []
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport):
        self.transport = transport
        self._arm_idle_close()

    def connection_lost(self, exc):
        self.transport = None
        self._disarm_idle_close()

    def _arm_idle_close(self):
        keep_alive = self.server.config.keep_alive_s
        if keep_alive > 0 and self.transport is not None and not self.busy:
            self._disarm_idle_close()
            self.idle_timer = asyncio.get_running_loop().call_later(keep_alive, self._close_idle)

    def _disarm_idle_close(self):
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _close_idle(self):
        self.idle_timer = None
        if self.transport is not None and not self.busy and not self.buf:
            self.transport.close()

    def data_received(self, data: bytes):
        self._disarm_idle_close()
        buf = self.buf + data if self.buf else data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            lines = buf[:head_end].split(b"\r\n")
            try:
                method, target, _version = lines[0].split(b" ", 2)
            except ValueError:
                self._abort(400)
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0") or 0)
            body_end = head_end + 4 + length
            if len(buf) < body_end:
                break
            body = buf[head_end + 4:body_end]
            buf = buf[body_end:]
            if self.busy:
                self.pending.append((method, target, headers, body))
            else:
                self.handle(method, target, headers, body)
        self.buf = buf
        self._arm_idle_close()

    def _abort(self, status: int):
        if self.transport is not None:
            self.transport.write(_error(status, "bad request"))
            self.transport.close()

    def _resume(self):
        self.busy = False
        while self.pending and not self.busy and self.transport is not None:
            self.handle(*self.pending.pop(0))
        self._arm_idle_close()

    def handle(self, method: bytes, target: bytes, headers: dict, body: bytes):
        server = self.server
        config = server.config
        write = self.transport.write
        path = target.split(b"?", 1)[0]
        if path == b"/health":
            write(_simple(200, b"", b"text/plain"))
            return
        if path == b"/debug/last":
            write(_simple(200, _dumps({"generations": server.generations, "last": server.last})))
            return
        if path == b"/metrics":  # like vLLM's, not behind the API key
            write(_simple(200, server.metrics(), b"text/plain; version=0.0.4; charset=utf-8"))
            return
        if (config.api_key and path.startswith(b"/v1")
                and headers.get(b"authorization", b"") != b"Bearer " + config.api_key.encode()):
            write(_simple(401, _dumps({"error": "Unauthorized"})))
            return
        if path == b"/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "servenest-noop"}
                    for m in config.models]
            write(_simple(200, _dumps({"object": "list", "data": data})))
            return
        if path not in (b"/v1/completions", b"/v1/chat/completions"):
            write(_error(404, f"no route {path.decode(errors='replace')}"))
            return
        if method != b"POST":
            write(_error(405, "method not allowed"))
            return
        chat = path == b"/v1/chat/completions"
        try:
            request = _loads(body)
        except ValueError:
            write(_error(400, "body is not JSON"))
            return
        server.generations += 1
        server.last = {
            "path": path.decode(),
            "headers": {k.decode(): v.decode(errors="replace") for k, v in headers.items()},
            "body": request,
        }
        model = request.get("model")
        if model not in config.models:
            write(_error(404, f"The model `{model}` does not exist."))
            return
        if chat:
            prompt = " ".join(part.get("text", "") if isinstance(part, dict) else str(part)
                              for message in request.get("messages") or []
                              for part in (message.get("content") if isinstance(
                                  message.get("content"), list) else [message.get("content")]))
        else:
            prompt = request.get("prompt")
            prompt = prompt if isinstance(prompt, str) else str(prompt)
        if "__" in prompt:
            if "__500__" in prompt:
                write(_error(500, "injected failure"))
                return
            if "__401__" in prompt:
                write(_simple(401, _dumps({"error": "Unauthorized"})))
                return
        if config.fail_every and server.generations % config.fail_every == 0:
            write(_error(500, f"injected failure (every {config.fail_every})"))
            return
        n = config.tokens
        if n is None:
            n = request.get("max_completion_tokens" if chat else "max_tokens") or DEFAULT_TOKENS
        n = max(int(n), 0)
        usage = server.usage_event(chat, model, len(prompt.split()), n)
        if "__" in prompt:
            if "__reset__" in prompt:
                write(_SSE_HEAD + server.token_event(chat, model, 0, False))
                self.transport.abort()
                return
            if "__malformed__" in prompt:
                write(_SSE_HEAD + _chunk(b"data: {not json\n\n") + _chunk(_DONE) + _END)
                return
            if "__nochunk__" in prompt:
                write(_SSE_HEAD + _chunk(_DONE) + _END)
                return
        if config.token_delay_s <= 0 and config.ttft_s <= 0:
            write(_SSE_HEAD + server.token_run(chat, model, n) + usage + _chunk(_DONE) + _END)
            return
        self.busy = True
        server.running[model] += 1  # the immediate path above is never seen in flight
        asyncio.get_running_loop().create_task(self._paced(chat, model, n, usage))

    async def _paced(self, chat: bool, model: str, n: int, usage: bytes):
        config = self.server.config
        try:
            if self.transport is None:
                return
            self.transport.write(_SSE_HEAD)
            if config.ttft_s > 0:
                await asyncio.sleep(config.ttft_s)
            for i in range(n):
                if i and config.token_delay_s > 0:
                    await asyncio.sleep(config.token_delay_s)
                if self.transport is None:
                    return
                self.transport.write(self.server.token_event(chat, model, i, i == n - 1))
            if self.transport is not None:
                self.transport.write(usage + _chunk(_DONE) + _END)
        finally:
            self.server.running[model] -= 1
            self._resume()


async def serve(host: str, port: int, config: Config, ready=None) -> None:
    server = Server(config)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Connection(server), host, port, backlog=4096)
    bound = srv.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    # SIGTERM through the loop: a Python-level handler raising SystemExit was sometimes not
    # run for seconds under uvloop, so stopping the server waited out its grace period.
    stopped = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stopped.done() or stopped.set_result(None))
    try:
        await stopped  # serving since create_server
    finally:
        srv.close()  # not wait_closed(): on newer Pythons it waits for idle keep-alive clients


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m servenest.rehearsal.openai_noop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100, help="0 picks a free port")
    p.add_argument("--tokens", type=int, default=None,
                   help="token events per response (default: the request's max_tokens)")
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None)
    key.add_argument("--api-key-file", default=None,
                     help="read the key from this file (stripped), keeping it out of argv")
    p.add_argument("--model", action="append", dest="models", default=None,
                   help="a served model name (repeatable; default 'noop')")
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--reasoning-chunks", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    p.add_argument("--keep-alive-s", type=float, default=0.0,
                   help="close connections idle this long after a response (uvicorn: 5; 0: never)")
    return p.parse_args(argv)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key
    try:
        with open(args.api_key_file) as fh:
            key = fh.read().strip()
    except OSError as exc:
        sys.exit(f"noop-server: cannot read --api-key-file: {exc.strerror}")
    if not key:
        sys.exit(f"noop-server: --api-key-file {args.api_key_file} is empty")
    return key


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.cpu})
    config = Config(tokens=args.tokens, token_delay_s=args.token_delay_ms / 1000,
                    ttft_s=args.ttft_ms / 1000, api_key=_api_key(args),
                    models=args.models or ["noop"], fail_every=args.fail_every,
                    reasoning_chunks=args.reasoning_chunks, keep_alive_s=args.keep_alive_s)

    def ready(port: int) -> None:
        print(f"{READY_PREFIX}http://{args.host}:{port}", flush=True)

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, config, ready))


class NoopServerProcess:
    """The server as a subprocess on a free loopback port; a context manager."""

    def __init__(self, *args: str, cpu: int | None = None, timeout_s: float = 15.0):
        argv = [sys.executable, "-m", "servenest.rehearsal.openai_noop", "--port", "0", *args]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        # stderr to a file, not a pipe nobody drains (a full pipe would stall the server).
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(READY_PREFIX) or not line:
                break
        if not line.startswith(READY_PREFIX):
            self.stop()
            self._stderr.seek(0)
            err = self._stderr.read()
            raise RuntimeError(f"no-op server did not start: {line!r} {err[-2000:]}")
        self.url = line[len(READY_PREFIX):].strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> NoopServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(*args: str, cpu: int | None = None) -> NoopServerProcess:
    return NoopServerProcess(*args, cpu=cpu)


if __name__ == "__main__":
    main()
