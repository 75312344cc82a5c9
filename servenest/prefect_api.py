"""Find the Prefect API the CLI talks to, or start a local server for it.

Run history is the point of running the pipeline through Prefect, so the CLI never uses
Prefect's throw-away ephemeral mode: it uses the configured ``PREFECT_API_URL``, or a
local ``prefect server start`` (SQLite) that it starts once and leaves running for the
UI at http://127.0.0.1:4200.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from servenest import paths
from servenest.errors import ServeNestError

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = int(os.environ.get("SERVENEST_PREFECT_PORT", "4200"))
# The server started here, for `servenest stop` (servenest.register.stop_started_processes).
SERVER_PID_FILE = "prefect-server.pid"


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def start_local_server(timeout_s: float = 120.0) -> tuple[str, float]:
    """(API URL, seconds spent starting it; 0 when one was already running)."""
    url = f"http://{LOCAL_HOST}:{LOCAL_PORT}/api"
    if _healthy(url):
        return url, 0.0
    prefect_bin = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
    log = paths.home() / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # The UI asks PREFECT_UI_API_URL for its data (default: port 4200, whatever ours is).
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": url}
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [prefect_bin, "server", "start", "--host", LOCAL_HOST, "--port", str(LOCAL_PORT)],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    (paths.home() / SERVER_PID_FILE).write_text(f"{proc.pid}\n")
    while time.monotonic() - started < timeout_s:
        if _healthy(url):
            return url, time.monotonic() - started
        time.sleep(0.2)
    raise ServeNestError(f"the local Prefect server did not answer within {timeout_s:.0f} s; see {log}")


def ensure_api() -> tuple[str, float]:
    """The API URL to use, and how long starting a server took (0 if none was started)."""
    url = configured_api_url()
    if url:
        if not _healthy(url):
            raise ServeNestError(f"the Prefect API at {url} (PREFECT_API_URL) does not answer")
        return url, 0.0
    return start_local_server()
