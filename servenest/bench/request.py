"""The request functions: one streamed request to ``/v1/completions`` or
``/v1/chat/completions`` with vLLM 0.32's payload and timing (``async_request_openai_completions``
and ``async_request_openai_chat_completions`` in ``vllm/benchmarks/lib/endpoint_request_func.py``).

Semantics, as vLLM has them:

- Payload (completions, backends ``openai``/``vllm``): ``model, prompt, repetition_penalty=1.0,
  max_tokens=expected_output_len, logprobs=None, stream, stream_options.include_usage``; chat
  (backend ``openai-chat``): ``model, messages=[{role: user, content: [{type: text, text}]}],
  max_completion_tokens, stream, stream_options``. Then ``ignore_eos`` when asked, then
  ``extra_body`` (sampling parameters such as ``temperature``: vLLM 0.32 sends none unless
  asked).
- ``Authorization: Bearer <key>`` only when a key is given.
- ``st`` is taken just before the POST. The first SSE event with non-empty ``choices`` gives
  TTFT (even with empty text, and for chat whatever its delta carries: reasoning deltas count);
  each later ``choices`` event appends its gap to ``itl``; ``latency`` is the last ``choices``
  event minus ``st`` (the usage event does not move it). A usage event sets ``output_tokens``
  from ``completion_tokens`` and, when the server reports it, ``prompt_len`` from
  ``prompt_tokens`` (vLLM 0.32 does both).
- Non-200, transport errors, malformed events and a stream without a ``choices`` event give
  ``success=False`` with a short ``error``; nothing raises out of :meth:`Endpoint.send`.
  One exception to vLLM: a request that went out on a pooled connection just as the server
  closed it as idle (dropped before a byte of answer) is sent once more on another
  connection and marked ``resent``; vLLM's client counts it as failed.

Hot path: one shared ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport`` (pooled
keep-alive aiohttp connections, none reused once the server closed it, 4 MiB read buffer, proxy looked up once, no cookie jar). Each
request is an ``httpx.Request`` with prebuilt URL and headers handed straight to the client's
transport (the client's auth/redirect/cookie layers are not needed); the body is serialized
with orjson; the response is read as raw bytes from the transport's aiohttp stream
(``iter_any``, as vLLM reads it), split on ``b"\n\n"`` and parsed with orjson. No
tokenization; nothing is allocated per request beyond the request and its result.
"""

from __future__ import annotations

import contextlib
import contextvars
import select
import time
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from servenest.bench.types import RequestResult, SampleRequest

COMPLETIONS_BACKENDS = frozenset({"openai", "vllm"})
CHAT_BACKENDS = frozenset({"openai-chat"})
BACKENDS = COMPLETIONS_BACKENDS | CHAT_BACKENDS

# vLLM: aiohttp.ClientTimeout(total=6 * 60 * 60).
REQUEST_TIMEOUT_S = 6 * 60 * 60.0
# aiohttp's default 64 KiB read buffer throttles long streams (vLLM #39963); SGLang uses 10 MB.
READ_BUFSIZE = 4 * 1024 * 1024
# "No limit" for the connection pool when no concurrency cap is given (vLLM passes limit=0).
UNCAPPED_CONNECTIONS = 0
# An idle pooled connection is dropped after this long, below the servers' own keep-alive
# (vLLM's and SGLang's uvicorn close idle connections after 5 s: VLLM_HTTP_TIMEOUT_KEEP_ALIVE).
# vLLM's client keeps them 60 s, so a request can go out on a connection the server is
# closing and fail with "Server disconnected"; on a busy machine, where the client learns
# of the close late, that happened to a few requests in a hundred at 5 req/s.
KEEPALIVE_S = 3.0
ERROR_MAX_CHARS = 300
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
# Whether the connection the current request took came from the pool (set by LiveConnector
# in the request's own task, read by Endpoint.send when the request fails).
_took_pooled = contextvars.ContextVar("servenest_took_pooled", default=False)

_perf_counter = time.perf_counter
_loads = orjson.loads
_NO_CHUNK_ERROR = "never received a valid chunk to calculate TTFT"


def api_url_for(base_url: str, endpoint: str) -> str:
    return base_url.rstrip("/") + "/" + endpoint.lstrip("/")


def check_backend(backend: str, api_url: str) -> None:
    """vLLM's ``_validate_api_url``: the backend's function only takes URLs it can talk to."""
    if backend in COMPLETIONS_BACKENDS:
        if not api_url.endswith("completions"):
            raise ValueError(f"backend {backend!r} needs a URL ending in 'completions', got {api_url}")
    elif backend in CHAT_BACKENDS:
        if not api_url.endswith("chat/completions"):
            raise ValueError(
                f"backend {backend!r} needs a URL ending in 'chat/completions', got {api_url}"
            )
    else:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(sorted(BACKENDS))}")


def make_client(max_concurrency: int | None = None, base_url: str | None = None) -> httpx.AsyncClient:
    """The one shared client of a run. Call it inside the running event loop; close it with
    ``await client.aclose()`` (which closes the aiohttp session too).

    Mirrors vLLM's session: ``TCPConnector(limit=max_concurrency or 0)``, six-hour timeout,
    proxy variables honoured; but idle connections are kept :data:`KEEPALIVE_S`, not 60 s,
    and one the server has closed is never reused (:class:`LiveConnector`).
    vLLM's ``trust_env=True`` makes aiohttp look the proxy and ``~/.netrc`` up in a worker
    thread on every request (two thread hops per request); here the proxy for ``base_url`` is
    looked up once, and netrc is not consulted (the key goes in the Authorization header). httpx's own ``trust_env`` is off so that it
    never mounts a proxy transport around the aiohttp one. No cookie jar.
    """
    limit = max_concurrency or UNCAPPED_CONNECTIONS
    connector = LiveConnector(
        limit=limit,
        limit_per_host=limit,
        ttl_dns_cache=300,
        keepalive_timeout=KEEPALIVE_S,
        enable_cleanup_closed=True,
        force_close=False,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        read_bufsize=READ_BUFSIZE,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    proxy = env_proxy_for(base_url) if base_url else None
    transport = AiohttpTransport(
        client=session,
        limits=httpx.Limits(max_connections=limit or None, keepalive_expiry=KEEPALIVE_S),
        proxy=httpx.Proxy(proxy) if proxy else None,
    )
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        # Raw bytes are parsed as they arrive: ask for no content coding.
        headers={"Accept-Encoding": "identity"},
    )


class LiveConnector(aiohttp.TCPConnector):
    """aiohttp's pool, with two changes so that no request goes out on a connection the server
    has closed or is about to close (vLLM's and SGLang's uvicorn close one idle for 5 s):

    - the most recently released connection is reused first (aiohttp takes the oldest): its
      server-side idle time is the shortest. The client's own idle clock starts when its loop
      reads the end of a response, which on a busy machine is seconds after the server sent
      it; the oldest connection, still "under 3 s" by that clock, had often passed the server's
      5 s and was closed as the request went out ("Server disconnected");
    - one the server has already closed is not handed out: urllib3's
      ``is_connection_dropped`` check (an idle connection with anything to read, even EOF, is
      dead), one ``poll`` per reuse. aiohttp learns of a close only when its loop reads the
      socket, which can be seconds late; the kernel knows at once.

    Those failures are the client's, not the server's, and a benchmark must not count them.
    """

    async def connect(self, req, traces, timeout):
        while True:
            idle = self._conns.get(req.connection_key)
            if idle and len(idle) > 1:
                idle.rotate(1)  # (connection, released_at) in release order: newest to the front
            _took_pooled.set(True)  # unless a new connection is made (_create_connection)
            conn = await super().connect(req, traces, timeout)
            if not _closed_by_peer(conn.transport):
                return conn
            conn.close()  # dropped from the pool; the next one, or a new one, is taken

    async def _create_connection(self, req, traces, timeout):
        _took_pooled.set(False)  # awaited by connect() itself: the request's own context
        return await super()._create_connection(req, traces, timeout)


def _lost_to_idle_close(exc: BaseException) -> bool:
    """A request that failed before any response byte, on a pooled connection that the server
    closed or reset: uvicorn closing the connection as idle while the request was on its way
    (the close crossed the poll in :class:`LiveConnector`). The server never read the request."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else None
    return (_took_pooled.get()
            and isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))
            and not isinstance(cause, aiohttp.ClientConnectorError))


def _closed_by_peer(transport) -> bool:
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _POLLIN)
    # A new connection has nothing to read either, so this costs it nothing but the call.
    return bool(poller.poll(0))


def env_proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) gives for ``url``, the
    way aiohttp's ``trust_env`` finds it."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme) or None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


def _exc_reason(exc: BaseException) -> str:
    # httpx_aiohttp maps aiohttp errors onto httpx ones and keeps the original as the cause.
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ else exc
    text = str(cause) or repr(cause)
    return _short(f"{type(cause).__name__}: {text}")


class Endpoint:
    """What every request of a run shares: URL, headers and the fixed part of the payload.

    Build it once per run; :meth:`send` is the request function.
    """

    __slots__ = ("api_url", "backend", "chat", "headers", "model_name", "url", "_tail",
                 "_client", "_transport")

    def __init__(
        self,
        api_url: str,
        model_name: str,
        backend: str = "openai",
        *,
        api_key: str | None = None,
        ignore_eos: bool = False,
        extra_body: dict[str, Any] | None = None,
    ):
        check_backend(backend, api_url)
        self.api_url = api_url
        self.backend = backend
        self.model_name = model_name
        self.chat = backend in CHAT_BACKENDS
        # Raw bytes are parsed as they arrive: no content coding.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.headers = httpx.Headers(headers)
        self.url = httpx.URL(api_url)
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        # Appended after the fixed keys, in vLLM's order: ignore_eos, sampling params, extra_body.
        tail: dict[str, Any] = {}
        if ignore_eos:
            tail["ignore_eos"] = True
        # vLLM 0.32 sends sampling parameters only when asked (`--temperature 0` is greedy);
        # callers pass them in extra_body.
        if extra_body:
            tail.update(extra_body)
        self._tail = tail

    def payload(self, req: SampleRequest) -> dict[str, Any]:
        if self.chat:
            payload: dict[str, Any] = {
                "model": self.model_name,
                "messages": [{"role": "user", "content": [{"type": "text", "text": req.prompt}]}],
                "max_completion_tokens": req.expected_output_len,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        else:
            payload = {
                "model": self.model_name,
                "prompt": req.prompt,
                "repetition_penalty": 1.0,
                "max_tokens": req.expected_output_len,
                "logprobs": None,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        payload.update(self._tail)
        return payload

    async def send(
        self,
        client: httpx.AsyncClient,
        req: SampleRequest,
        index: int = 0,
        scheduled_s: float = 0.0,
        start: float = 0.0,
    ) -> RequestResult:
        """Send one request and time it. ``start`` is the benchmark's perf_counter origin;
        ``scheduled_s`` is when the request should have gone, relative to it."""
        out = RequestResult(index=index, prompt_len=req.prompt_len, scheduled_s=scheduled_s)
        if client is not self._client:
            # The client's transport for this URL, called directly: the request needs none of
            # the client's auth, redirect, cookie or event-hook handling, and skipping it
            # roughly halves the per-request cost.
            self._transport = client._transport_for_url(self.url)
            self._client = client
        transport = self._transport
        request = httpx.Request(
            "POST", self.url, headers=self.headers, content=orjson.dumps(self.payload(req))
        )
        chat = self.chat
        append_itl = out.itl.append
        parts: list[str] = []
        add_text = parts.append
        first = False
        response = None
        st = _perf_counter()
        out.sent_s = st - start
        last = st
        _took_pooled.set(False)
        try:
            try:
                response = await transport.handle_async_request(request)
            except httpx.TransportError as exc:
                if not _lost_to_idle_close(exc):
                    raise
                # Sent again once, as browsers do (Chromium's ShouldResendRequest) and RFC 9112
                # 9.3.1 allows when the request was never applied: nothing came back, and a
                # completion changes nothing on the server. Timed from the first send.
                out.resent = True
                response = await transport.handle_async_request(request)
            if response.status_code != 200:
                await response.aread()
                detail = response.text.strip()
                out.error = _short(
                    f"HTTP {response.status_code} {response.reason_phrase}"
                    + (f": {detail}" if detail else "")
                )
                return out
            buf = b""
            async for chunk in _raw_chunks(response):
                buf = buf + chunk if buf else chunk
                messages = []
                pos = 0
                while (end := buf.find(b"\n\n", pos)) >= 0:
                    msg = buf[pos:end].strip()
                    pos = end + 2
                    if msg:
                        messages.append(msg)
                if pos:
                    buf = buf[pos:]
                # vLLM's handler also takes a trailing event that lacks its blank line, once it
                # is complete JSON; a cheap shape check first keeps partial events unparsed.
                if buf.startswith(b"data: ") and buf.rstrip().endswith((b"}", b"[DONE]")):
                    tail = buf.strip()
                    if tail.endswith(b"[DONE]") or _is_json(tail[6:]):
                        messages.append(tail)
                        buf = b""
                for msg in messages:
                    if msg[0] == 58:  # b":" - an SSE comment (keep-alive ping)
                        continue
                    if msg.startswith(b"data: "):
                        msg = msg[6:]
                    if msg == b"[DONE]":
                        continue
                    # vLLM stamps a chat event before parsing it and a completions event
                    # after; the same here, so that the timings agree.
                    ts = _perf_counter() if chat else 0.0
                    data = _parse(msg)
                    choices = data.get("choices")
                    if choices:
                        if not chat:
                            ts = _perf_counter()
                        if first:
                            append_itl(ts - last)
                        else:
                            first = True
                            out.ttft = ts - st
                        # Only token chunks advance the end of the request.
                        last = ts
                        piece = choices[0]["delta"].get("content") if chat else choices[0].get("text")
                        if piece:
                            add_text(piece)
                        continue
                    usage = data.get("usage")
                    if usage:
                        out.output_tokens = usage.get("completion_tokens") or 0
                        prompt_tokens = usage.get("prompt_tokens")
                        if prompt_tokens is not None:
                            out.prompt_len = prompt_tokens
            out.generated_text = "".join(parts)
            out.latency = last - st
            if first:
                out.success = True
            else:
                out.error = _NO_CHUNK_ERROR
        except Exception as exc:  # noqa: BLE001 - a failure is a failed request, never a raise
            out.success = False
            out.error = _exc_reason(exc)
        finally:
            if response is not None:
                with contextlib.suppress(Exception):  # the result is already decided
                    await response.aclose()
        return out


class MalformedEventError(ValueError):
    """An SSE data event that is not JSON."""


def _parse(msg: bytes) -> Any:
    try:
        return _loads(msg)
    except orjson.JSONDecodeError:
        raise MalformedEventError(
            "malformed SSE event: " + msg[:80].decode("utf-8", "replace")
        ) from None


def _is_json(data: bytes) -> bool:
    try:
        _loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _raw_chunks(response: httpx.Response):
    """The body's bytes as they arrive. With the aiohttp transport, straight from aiohttp's
    stream (``iter_any``, like vLLM), skipping httpx's per-chunk wrapper; else ``aiter_raw``."""
    aio = getattr(response.stream, "_aiohttp_response", None)
    if aio is not None:
        return aio.content.iter_any()
    return response.aiter_raw()
