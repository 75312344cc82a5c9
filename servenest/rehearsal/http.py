"""What the local emulators' HTTP handlers share (the cloud API and the Kubernetes API):
a quiet, keep-alive handler that hands each request to its emulator as plain values."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any
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
