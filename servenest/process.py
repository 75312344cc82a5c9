"""Local processes: start an engine in its own session, watch it, stop all of it.

vLLM runs as several processes (API server, engine core, workers). Starting it in a new
session gives them one session and process group, both numbered by the leader's pid, so
teardown can signal all of them. Which group is ours is decided by the leader's start
time, recorded at launch (``/proc/PID/stat``), or by ``SERVENEST_DEPLOYMENT=<name>`` in
its environment; never by the mark alone, because vLLM's children rename themselves with
setproctitle, which overwrites the environment block that /proc shows. A stale state file
therefore never kills an unrelated process that later reused the pid: the kernel does not
hand out a pid while it still names a live session, and a reused leader has another start
time.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MARK_ENV = "SERVENEST_DEPLOYMENT"

# Popen objects of engines this process started, so their exit codes can be read
# (and zombies reaped) instead of guessed from /proc.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class ProcessState:
    pid: int
    alive: bool
    exit_code: int | None = None


def live_sigint() -> None:
    """``preexec_fn`` for a child that must act on SIGINT: Prefect's worker stops on SIGTERM by
    sending itself SIGINT. A process started in the background (``cmd &`` in a script) ignores
    SIGINT, its children inherit that, and Python keeps an inherited SIG_IGN: such a worker
    would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_group(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        proc = subprocess.Popen(
            list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True, close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (identifies it beyond its pid)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _environ_has_mark(pid: int, deployment: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK_ENV}={deployment}".encode() in env


def state(pid: int) -> ProcessState:
    child = _CHILDREN.get(pid)
    if child is not None:
        code = child.poll()
        return ProcessState(pid, code is None, code)
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return ProcessState(pid, False)
    return ProcessState(pid, True)


def session_members(sid: int) -> list[int]:
    """Live processes whose session and process group are ``sid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == sid and int(fields[3]) == sid:
            out.append(int(entry.name))
    return sorted(out)


def group_members(pgid: int, deployment: str, leader_start: int | None = None) -> list[int]:
    """Live processes of the engine session led by ``pgid``, once it is proven ours."""
    members = session_members(pgid)
    if not members:
        return []
    if pgid in members:
        ours = (leader_start is not None and start_ticks(pgid) == leader_start) or _environ_has_mark(
            pgid, deployment
        )
        return members if ours else []
    # The leader is gone; what is left of its session started after it did.
    if leader_start is not None:
        members = [p for p in members if (start_ticks(p) or 0) >= leader_start]
    return members


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def stop_group(pgid: int, deployment: str, grace_s: float, leader_start: int | None = None) -> dict:
    """TERM every member of the engine's session, KILL what is left after ``grace_s``.

    Returns what happened, for the run log. Safe to call when nothing is running.
    """
    members = group_members(pgid, deployment, leader_start)
    if not members:
        _reap(pgid)
        return {"signalled": 0, "killed": 0}
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_members(pgid, deployment, leader_start):
            return {"signalled": len(members), "killed": 0}
        time.sleep(0.1)
    left = group_members(pgid, deployment, leader_start)
    _signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_members(pgid, deployment, leader_start) and time.monotonic() < deadline:
        time.sleep(0.05)
    _reap(pgid)
    return {"signalled": len(members), "killed": len(left)}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """'pid N (cmdline)' of the process listening on ``port``, when /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                try:
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    cmd = "?"
                return f"pid {entry.name} ({cmd[:120]})"
    return None


def wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_is_free(host, port):
            return True
        time.sleep(0.05)
    return port_is_free(host, port)


def tail(path: Path, lines: int = 40) -> list[str]:
    """The last ``lines`` lines of a log file (reads only the end of big files)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]
