"""The request functions: vLLM 0.32's payloads and timing, against the no-op server
(a subprocess on a free loopback port) and against scripted byte streams."""

from __future__ import annotations

import json
import socket
import urllib.request

import httpx
import pytest

from servenest.bench.request import Endpoint, make_client
from servenest.bench.runner import run_sync
from servenest.bench.types import SampleRequest
from servenest.rehearsal.openai_noop import NoopServerProcess

REQ = SampleRequest(prompt="one two three", prompt_len=4, expected_output_len=5)


@pytest.fixture(scope="module")
def plain():
    with NoopServerProcess() as server:
        yield server


@pytest.fixture(scope="module")
def paced():
    # 5 token events: the first after 30 ms, then one every 20 ms; 2 chat deltas are reasoning.
    with NoopServerProcess("--tokens", "5", "--ttft-ms", "30", "--token-delay-ms", "20",
                           "--reasoning-chunks", "2") as server:
        yield server


def last_request(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/debug/last", timeout=5) as resp:
        return json.loads(resp.read())["last"]


def send_one(url: str, endpoint: str, backend: str, req: SampleRequest = REQ, **kw):
    async def go():
        client = make_client(4, url)
        try:
            endpoint_ = Endpoint(url + endpoint, kw.pop("model_name", "noop"), backend, **kw)
            return await endpoint_.send(client, req, 7)
        finally:
            await client.aclose()

    return run_sync(go())


@pytest.mark.parametrize(("endpoint", "backend"), [
    ("/v1/completions", "openai"), ("/v1/completions", "vllm"),
    ("/v1/chat/completions", "openai-chat"),
])
def test_timing_follows_vllm(paced, endpoint, backend):
    r = send_one(paced.url, endpoint, backend)
    assert r.success, r.error
    assert r.index == 7 and r.error == ""
    assert r.output_tokens == 5  # usage.completion_tokens
    assert r.prompt_len == 3  # usage.prompt_tokens replaces the client count (vLLM 0.32)
    # TTFT at the first choices event, one ITL per later event, latency at the last one.
    assert 0.025 <= r.ttft < 0.5
    assert len(r.itl) == 4
    assert sorted(r.itl)[2] >= 0.012 and sum(r.itl) >= 0.06 and max(r.itl) < 0.5, r.itl
    assert r.latency == pytest.approx(r.ttft + sum(r.itl), abs=1e-6)
    if backend == "openai-chat":
        # Reasoning deltas are timed (they are tokens) but are not content.
        assert r.generated_text == " tok" * 3
    else:
        assert r.generated_text == " tok" * 5


def test_completions_payload_and_headers(plain):
    r = send_one(plain.url, "/v1/completions", "openai", ignore_eos=True,
                 extra_body={"temperature": 0.0, "top_p": 0.9})
    assert r.success, r.error
    last = last_request(plain)
    assert last["path"] == "/v1/completions"
    assert last["body"] == {
        "model": "noop", "prompt": "one two three", "repetition_penalty": 1.0,
        "max_tokens": 5, "logprobs": None, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True,
        "temperature": 0.0, "top_p": 0.9,
    }
    assert list(last["body"])[:7] == ["model", "prompt", "repetition_penalty", "max_tokens",
                                      "logprobs", "stream", "stream_options"]
    assert last["headers"]["content-type"] == "application/json"
    assert "authorization" not in last["headers"]


def test_chat_payload_and_key(plain):
    r = send_one(plain.url, "/v1/chat/completions", "openai-chat", api_key="sk-test",
                 extra_body={"temperature": 0.7})
    assert r.success, r.error
    last = last_request(plain)
    assert last["path"] == "/v1/chat/completions"
    assert last["body"] == {
        "model": "noop",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
        "max_completion_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.7,
    }
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert r.output_tokens == 5 and len(r.itl) == 4


@pytest.mark.parametrize(("prompt", "reason"), [
    ("__500__", "HTTP 500 Internal Server Error"),
    ("__401__", "HTTP 401 Unauthorized"),
    ("__reset__", ""),
    ("__malformed__", "malformed SSE event"),
    ("__nochunk__", "never received a valid chunk"),
])
def test_server_failures_become_failed_results(plain, prompt, reason):
    r = send_one(plain.url, "/v1/completions", "openai", SampleRequest(prompt, 1, 3))
    assert not r.success
    assert r.error and len(r.error) <= 300
    assert reason in r.error


def test_unknown_model_and_refused_connection_do_not_raise(plain):
    r = send_one(plain.url, "/v1/completions", "openai", model_name="other")
    assert not r.success and r.error.startswith("HTTP 404")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = send_one(f"http://127.0.0.1:{port}", "/v1/completions", "openai")
    assert not r.success and "connect" in r.error.lower()


def test_backend_and_url_must_match():
    with pytest.raises(ValueError, match="chat/completions"):
        Endpoint("http://x/v1/completions", "m", "openai-chat")
    with pytest.raises(ValueError, match="unknown backend"):
        Endpoint("http://x/v1/completions", "m", "sglang")


# -- SSE parsing on scripted byte streams -------------------------------------------------------


def scripted(chunks: list[bytes], status: int = 200):
    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):
            for chunk in chunks:
                yield chunk

    def handler(request):
        return httpx.Response(status, stream=Stream())

    async def go(backend="openai", url="http://t/v1/completions"):
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        try:
            return await Endpoint(url, "m", backend).send(client, REQ, 0)
        finally:
            await client.aclose()

    return go


def ev(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


TOK = {"choices": [{"index": 0, "text": "a"}]}
EMPTY_TEXT = {"choices": [{"index": 0, "text": ""}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}


def test_events_split_across_chunks_comments_and_an_unterminated_last_event():
    body = b": ping\n\n" + ev(EMPTY_TEXT) + ev(TOK) + ev(TOK) + ev(USAGE)
    # Cut everywhere, including inside the "\n\n" separators; end without the blank line.
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)] + [b"data: [DONE]"]
    r = run_sync(scripted(chunks)())
    assert r.success, r.error
    assert len(r.itl) == 2  # the empty-text first event still gives TTFT (vLLM)
    assert r.output_tokens == 3 and r.prompt_len == 9
    assert r.generated_text == "aa"

    r = run_sync(scripted([ev(TOK), ev(TOK)[:-2]])())  # last event complete JSON, no "\n\n"
    assert r.success and len(r.itl) == 1 and r.output_tokens == 0


def test_usage_only_stream_and_non_json_event_fail():
    r = run_sync(scripted([ev(USAGE), b"data: [DONE]\n\n"])())
    assert not r.success and "never received" in r.error
    r = run_sync(scripted([ev(TOK), b"data: {oops\n\n"])())
    assert not r.success and "malformed SSE event" in r.error


def test_chat_usage_event_does_not_move_latency():
    delta = {"choices": [{"index": 0, "delta": {"content": "x"}}]}
    reasoning = {"choices": [{"index": 0, "delta": {"reasoning_content": "r"}}]}
    r = run_sync(scripted([ev(reasoning), ev(delta), ev(USAGE), b"data: [DONE]\n\n"])(
        "openai-chat", "http://t/v1/chat/completions"))
    assert r.success and len(r.itl) == 1
    assert r.latency == pytest.approx(r.ttft + r.itl[0], abs=1e-9)
    assert r.generated_text == "x" and r.output_tokens == 3


# -- connections the server closed while the client's loop was busy ---------------------------

IDLE_CLOSE_S = 0.2


def _send_twice_with_a_busy_loop_between(server, client_factory):
    """One request, then the loop blocked past the server's idle close (its FIN waits in the
    kernel, unread), then a second request on the same pool."""
    import time

    async def go():
        client = client_factory()
        try:
            ep = Endpoint(server.url + "/v1/completions", "noop", "openai")
            first = await ep.send(client, REQ, 0)
            time.sleep(IDLE_CLOSE_S * 3)  # a starved client: nothing runs on the loop
            second = await ep.send(client, REQ, 1)
            return first, second
        finally:
            await client.aclose()

    return run_sync(go())


@pytest.fixture(scope="module")
def closes_idle():
    with NoopServerProcess("--keep-alive-s", str(IDLE_CLOSE_S)) as server:
        yield server


def test_a_connection_the_server_closed_is_not_reused(closes_idle):
    first, second = _send_twice_with_a_busy_loop_between(closes_idle, lambda: make_client(4, closes_idle.url))
    assert first.success, first.error
    assert second.success, second.error
    assert second.output_tokens == 5


def test_without_the_check_the_same_sequence_fails(closes_idle):
    # The control: aiohttp's own pool (vLLM's client) sends on the dead connection.
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def plain_pool():
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=60))
        return httpx.AsyncClient(transport=AiohttpTransport(client=session))

    first, second = _send_twice_with_a_busy_loop_between(closes_idle, plain_pool)
    assert first.success, first.error
    assert not second.success
    assert second.error.startswith(("ServerDisconnectedError", "ClientOSError")), second.error


def test_the_most_recently_released_connection_is_reused_first(plain):
    # Its server-side idle time is the shortest: the least likely to be closing.
    import asyncio

    async def go():
        client = make_client(4, plain.url)
        try:
            ep = Endpoint(plain.url + "/v1/completions", "noop", "openai")
            await asyncio.gather(ep.send(client, REQ, 0), ep.send(client, REQ, 1))
            connector = client._transport.client.connector
            (key, idle), = connector._conns.items()
            older, newer = (proto for proto, _released in idle)
            await ep.send(client, REQ, 2)
            return older, newer, [proto for proto, _ in connector._conns[key]]
        finally:
            await client.aclose()

    older, newer, left = run_sync(go())
    assert newer is not older
    # The newer one served the request and went back to the end; aiohttp's own order (oldest
    # first) would leave [newer, older].
    assert left == [older, newer]


# -- a request that crosses the server's idle close (the close after LiveConnector's poll) -----

_SSE = (b'data: {"choices":[{"text":"x"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n")
_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
           b"content-length: %d\r\n\r\n" % len(_SSE)) + _SSE


async def _closing_server(answer_first_on_each_connection: bool):
    """A loopback server that answers a connection's first request only if asked to and drops
    the connection, unanswered, on any other request: what a client sees when uvicorn closes an
    idle connection as its request arrives. Returns (server, url, requests seen)."""
    import asyncio

    seen = []

    async def handle(reader, writer):
        answered = False
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            seen.append(head)
            if answered or not answer_first_on_each_connection:
                writer.transport.abort()  # closed without a byte of answer
                return
            writer.write(_ANSWER)
            await writer.drain()
            answered = True

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


def _two_requests(answer_first_on_each_connection: bool):
    async def go():
        server, url, seen = await _closing_server(answer_first_on_each_connection)
        client = make_client(4, url)
        try:
            ep = Endpoint(url + "/v1/completions", "noop", "openai")
            first = await ep.send(client, REQ, 0)
            second = await ep.send(client, REQ, 1)
            return first, second, len(seen)
        finally:
            await client.aclose()
            server.close()

    return run_sync(go())


def test_a_request_lost_to_the_servers_idle_close_is_sent_again_once():
    first, second, requests_seen = _two_requests(answer_first_on_each_connection=True)
    assert first.success and not first.resent, first.error
    # The second went out on the pooled connection, which the server dropped unanswered: sent
    # again on a new connection, counted once, its time taken from the first send.
    assert second.success, second.error
    assert second.resent and second.output_tokens == 1
    assert requests_seen == 3


def test_a_new_connection_dropped_unanswered_is_a_failure_not_a_resend():
    # Not the idle-close race: a server that drops a fresh connection is failing, and the
    # benchmark must say so (and not send the request twice).
    first, _second, requests_seen = _two_requests(answer_first_on_each_connection=False)
    assert not first.success and not first.resent
    assert first.error.startswith(("ServerDisconnectedError", "ClientOSError")), first.error
    assert requests_seen == 2  # one each, none repeated
