"""The no-op OpenAI server: the key read from a file, requests in flight on /metrics."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from servenest.health import parse_metrics
from servenest.rehearsal.openai_noop import NoopServerProcess
from tests.unit.test_rehearsal_hosts import _NO_PROXY, KEY, http_status, wait_for


def test_noop_server_reads_its_key_from_a_file_and_counts_requests_in_flight(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with NoopServerProcess("--model", "m", "--api-key-file", str(key_file), "--tokens", "4",
                           "--token-delay-ms", "300") as server:
        assert http_status(f"{server.url}/v1/models") == 401
        assert http_status(f"{server.url}/v1/models", KEY) == 200
        assert KEY.encode() not in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()

        def running() -> float:
            with _NO_PROXY.open(f"{server.url}/metrics", timeout=2) as resp:
                values = parse_metrics(resp.read().decode())
            assert values["vllm:num_requests_waiting"] == 0
            return values["vllm:num_requests_running"]

        assert running() == 0
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 4}).encode()
        request = urllib.request.Request(f"{server.url}/v1/completions", data=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        stream = threading.Thread(target=lambda: _NO_PROXY.open(request, timeout=10).read())
        stream.start()
        assert wait_for(lambda: running() == 1, timeout=5)
        stream.join(timeout=10)
        assert running() == 0


def test_noop_server_refuses_an_empty_key_file(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = subprocess.run([sys.executable, "-m", "servenest.rehearsal.openai_noop", "--port", "0",
                           "--api-key-file", str(empty)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "is empty" in done.stderr


def test_noop_server_closes_a_connection_idle_past_its_keep_alive():
    # As uvicorn does after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s): the race a pooling client meets.
    with NoopServerProcess("--keep-alive-s", "0.2") as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for _ in range(2):  # still open after a first response: only idleness closes it
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got:
                    got += sock.recv(4096)
                assert got.startswith(b"HTTP/1.1 200")
            sock.settimeout(2.0)
            assert sock.recv(4096) == b""  # EOF after ~0.2 s idle, well before the timeout
    with NoopServerProcess() as server:  # the default keeps idle connections
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(0.6)
            with pytest.raises(TimeoutError):  # still open: recv waits rather than reading EOF
                sock.recv(4096)
