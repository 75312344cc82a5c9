"""Real servers for the integration tests: Debian's PostgreSQL and ``prefect server start``.

Both are context managers, so fixtures of any scope can use them; each stops what it
started on exit, also when the body failed.

API auth in Prefect 3.8.8 (``prefect/server/api/server.py``, ``server/utilities/subscriptions.py``):

* The server reads ``PREFECT_SERVER_API_AUTH_STRING`` ("user:password"; any string works,
  the server compares the whole decoded value). When it is set, an HTTP middleware on the
  API app (everything under ``/api``) requires ``Authorization: Basic base64(auth_string)``
  and answers ``401 {"exception_message": "Unauthorized"}`` otherwise (constant-time compare).
* Open without credentials: ``GET /api/health`` and ``GET /api/ready`` only (exact paths,
  for load balancer and Kubernetes probes), and the UI's static files outside ``/api``
  (the UI's ``/ui-settings`` then says ``auth: BASIC`` and the UI asks for the string).
* WebSockets (events in and out, log and task-run subscriptions) must use the ``prefect``
  subprotocol and send ``{"type": "auth", "token": <auth string>}`` first; a wrong or
  missing token closes them with 1008.
* Clients read ``PREFECT_API_AUTH_STRING`` (same value) and send the header themselves:
  ``PrefectClient``, the events and logs clients, workers and the flow runs they start
  (a process worker passes its environment on; a Kubernetes worker puts its own settings
  into the Job's env, see ``deployments/work-pools/ack-kubernetes.json``).
* It is not TLS: over anything but loopback, put the server behind HTTPS.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PREFECT = str(Path(sys.executable).parent / "prefect")
PG_INSTALL_HINT = ("install the server with `apt-get install -y --no-install-recommends postgresql` "
                   "(scripts/setup.sh does when it runs as root), or set SERVENEST_PG_BINDIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


# PostgreSQL ------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The directory with ``initdb``, ``postgres``, ``pg_ctl`` and ``psql``.

    ``SERVENEST_PG_BINDIR``, else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian).
    """
    wanted = ("initdb", "postgres", "pg_ctl", "psql")
    candidates = ([os.environ["SERVENEST_PG_BINDIR"]] if os.environ.get("SERVENEST_PG_BINDIR")
                  else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                              key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                              reverse=True))
    for d in candidates:
        if all(os.access(Path(d) / name, os.X_OK) for name in wanted):
            return Path(d)
    raise RuntimeError(f"no PostgreSQL server binaries ({', '.join(wanted)}) in "
                       f"{candidates or '/usr/lib/postgresql/*/bin'}: {PG_INSTALL_HINT}")


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(f"running as root but there is no `postgres` user: {PG_INSTALL_HINT}") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster with database ``prefect`` (and ``pg_trgm``) in it.

    Yields ``postgresql+asyncpg://postgres@127.0.0.1:<port>/prefect`` (trust auth, loopback
    only). The cluster lives in a fresh temporary directory owned by the server's user
    (pytest's own temporary directories are root-only, which ``postgres`` cannot enter);
    its log is copied to ``root/postgres.log`` on exit. Tuned for tests, not durability
    (``fsync=off``). Stopped with a fast shutdown on exit, also after a failure.
    """
    bindir = postgres_bindir()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="servenest-pg-"))
    data, log = work / "data", work / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    port = _free_port()
    started = False
    try:
        init = subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                          "-E", "UTF8", "--locale=C", "--no-sync"]),
            capture_output=True, text=True, timeout=120, cwd=work)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:] or init.stdout[-2000:]}")
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={work} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        start = subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log),
                          "-w", "-t", "60", "-o", options]),
            capture_output=True, text=True, timeout=90, cwd=work)
        started = True  # pg_ctl may have started it even when it reports a failure
        if start.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start ({start.returncode}): {start.stdout[-1000:]}\n"
                               f"{_tail(log)}")
        psql = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(port), "-U", "postgres"]
        for db, sql in (("postgres", "CREATE DATABASE prefect"),
                        ("prefect", "CREATE EXTENSION IF NOT EXISTS pg_trgm")):
            out = subprocess.run([*psql, "-d", db, "-c", sql], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
            if out.returncode != 0:
                raise RuntimeError(f"psql {sql!r} failed: {out.stderr[-2000:]}")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        if started:
            stop = subprocess.run(
                _as_postgres([str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"]),
                capture_output=True, text=True, timeout=60, cwd=work)
            if stop.returncode != 0:
                _kill_postmaster(data)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, root / "postgres.log")
        shutil.rmtree(work, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the children follow their postmaster
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


# Prefect server -------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A running ``prefect server start`` and what a client needs to reach it."""

    api_url: str
    auth_string: str | None
    log: Path
    home: Path
    database_url: str
    pid: int
    #: For client subprocesses: ``subprocess.run(..., env={**os.environ, **server.env})``.
    env: dict[str, str] = field(default_factory=dict)

    def settings(self):
        """``temporary_settings`` pointing in-process Prefect clients at this server."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        if self.auth_string:
            return temporary_settings(updates={PREFECT_API_URL: self.api_url,
                                               PREFECT_API_AUTH_STRING: self.auth_string})
        return temporary_settings(updates={PREFECT_API_URL: self.api_url},
                                  restore_defaults={PREFECT_API_AUTH_STRING})

    def headers(self) -> dict[str, str]:
        """The Basic auth header the server wants (empty without auth)."""
        if not self.auth_string:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}


@contextlib.contextmanager
def prefect_server(home: Path, *, database_url: str | None = None, auth_string: str | None = None,
                   ui: bool = False, startup_timeout: float = 120.0) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1 and a free port, as its own process group.

    ``home`` becomes its ``PREFECT_HOME`` (and holds the SQLite database unless
    ``database_url`` is given, and the log ``prefect-server.log``). No ``PREFECT_*`` variable
    of this process reaches the server: it gets only what is set here. With ``auth_string``
    the API requires Basic auth (see the module docstring). Waits for ``/api/health`` (with
    the auth header when auth is on) up to ``startup_timeout`` seconds and raises with the
    log's tail if the server dies or does not answer; on exit sends SIGTERM to its process
    group, then SIGKILL after 20 s.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "prefect-server.log"
    port = _free_port()
    database_url = database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    })
    api_url = f"http://127.0.0.1:{port}/api"
    if ui:  # else the UI asks the default port (4200) for its data: another server, or none
        env["PREFECT_UI_API_URL"] = api_url
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=home)
    client_env = {"PREFECT_API_URL": api_url}
    if auth_string:
        client_env["PREFECT_API_AUTH_STRING"] = auth_string
    server = PrefectServer(api_url=api_url, auth_string=auth_string, log=log, home=home,
                           database_url=database_url, pid=proc.pid, env=client_env)
    try:
        _wait_healthy(server, proc, startup_timeout)
        yield server
    finally:
        stop_process_group(proc, grace_s=20.0)


def _wait_healthy(server: PrefectServer, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=5.0, headers=server.headers()) as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode} before it answered; "
                                   f"{server.log}:\n{_tail(server.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{server.api_url}/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not answer {server.api_url}/health within "
                                   f"{timeout_s:.0f} s; {server.log}:\n{_tail(server.log)}")
            time.sleep(0.25)


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    # Children (uvicorn workers, services) may outlive the leader: sweep the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def drain_client_workers() -> None:
    """Flush this process's queued Prefect logs and events (before its server stops)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
