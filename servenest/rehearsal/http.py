"""What the local emulators' HTTP handlers share (the cloud API and the Kubernetes API):
a quiet, keep-alive handler that hands each request to its emulator as plain values."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


class EmulatorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body then
    # waits for the client's delayed ACK and every request takes 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def request_parts(self) -> tuple[str, str, dict[str, str], bytes, dict[str, str]]:
        """(method, path, query, body, lower-cased headers) of the request being served."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        return self.command, url.path, query, body, {k.lower(): v for k, v in self.headers.items()}


class ServedEmulator:
    """An emulator served over HTTP on a daemon thread: start/stop and a context manager.

    Subclasses set ``host``, ``port`` (0 for any free one), ``handler`` (an
    :class:`EmulatorHandler` subclass; it gets ``emulator`` set to the instance) and
    ``thread_name``; ``_before_stop`` lets them release what waits on the server.
    """

    handler: type[EmulatorHandler]
    thread_name = "emulator"
    host: str
    port: int
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        handler = type("Handler", (self.handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _before_stop(self) -> None:
        pass

    def stop(self) -> None:
        self._before_stop()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
