"""servenest/process.py: engine process groups, the deployment mark, ports and logs."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from servenest import process

DEPLOYMENT = "unit-proc"


def live_group(pgid: int) -> list[int]:
    """Every non-zombie process in the group, read from /proc independently of the module."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def wait_for(predicate, timeout: float = 5.0, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def env_with_mark(mark: str | None = DEPLOYMENT) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    if mark is not None:
        env[process.MARK_ENV] = mark
    return env


def start(script: str, tmp_path, process_groups, mark: str | None = DEPLOYMENT):
    proc = process.start_group(["bash", "-c", script], env_with_mark(mark), tmp_path / "logs" / "p.log")
    process_groups.append(proc)
    return proc


def test_start_group_runs_in_its_own_marked_group(tmp_path, process_groups):
    proc = start("sleep 300 & sleep 300 & wait", tmp_path, process_groups)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    members = wait_for(lambda: len(process.group_members(proc.pid, DEPLOYMENT)) == 3 and
                       process.group_members(proc.pid, DEPLOYMENT))
    assert members and proc.pid in members  # bash and its two children all carry the mark
    assert sorted(members) == sorted(live_group(proc.pid))
    assert process.group_members(proc.pid, "another-deployment") == []


def test_stop_group_stops_every_member(tmp_path, process_groups):
    proc = start("sleep 300 & sleep 300 & wait", tmp_path, process_groups)
    assert wait_for(lambda: len(process.group_members(proc.pid, DEPLOYMENT)) == 3)
    result = process.stop_group(proc.pid, DEPLOYMENT, grace_s=5)
    assert result == {"signalled": 3, "killed": 0}
    assert wait_for(lambda: not live_group(proc.pid), timeout=2) is True
    assert process.state(proc.pid).alive is False
    # Safe to call again when nothing is left.
    assert process.stop_group(proc.pid, DEPLOYMENT, grace_s=0.5) == {"signalled": 0, "killed": 0}


def test_group_ignoring_term_is_killed_after_the_grace_period(tmp_path, process_groups):
    proc = start("trap '' TERM; sleep 300 & sleep 300 & wait", tmp_path, process_groups)
    assert wait_for(lambda: len(process.group_members(proc.pid, DEPLOYMENT)) == 3)
    started = time.monotonic()
    result = process.stop_group(proc.pid, DEPLOYMENT, grace_s=0.5)
    elapsed = time.monotonic() - started
    assert result["signalled"] == 3
    assert result["killed"] > 0
    assert elapsed >= 0.5  # TERM got its grace period first
    assert wait_for(lambda: not live_group(proc.pid), timeout=2) is True


def test_stop_group_without_the_mark_signals_nothing(tmp_path, process_groups):
    proc = start("sleep 300", tmp_path, process_groups, mark=None)
    other = start("sleep 300", tmp_path, process_groups, mark="other-deployment")
    assert wait_for(lambda: live_group(proc.pid) and live_group(other.pid))
    assert process.stop_group(proc.pid, DEPLOYMENT, grace_s=0.2) == {"signalled": 0, "killed": 0}
    assert process.stop_group(other.pid, DEPLOYMENT, grace_s=0.2) == {"signalled": 0, "killed": 0}
    time.sleep(0.05)
    assert proc.poll() is None and other.poll() is None  # both untouched
    for p in (proc, other):
        os.killpg(p.pid, 9)
        p.wait(timeout=5)


def test_state_reports_a_finished_childs_exit_code(tmp_path, process_groups):
    proc = start("exit 3", tmp_path, process_groups)
    assert wait_for(lambda: not process.state(proc.pid).alive)
    st = process.state(proc.pid)
    assert st.exit_code == 3


def test_state_of_a_running_child(tmp_path, process_groups):
    proc = start("sleep 300", tmp_path, process_groups)
    assert process.state(proc.pid) == process.ProcessState(proc.pid, True, None)


def test_state_of_processes_not_started_here():
    assert process.state(os.getpid()).alive is True
    assert process.state(2**22 + 12345).alive is False  # above pid_max: never a process


def test_start_group_writes_output_to_the_log(tmp_path, process_groups):
    proc = start("echo hello-from-engine; echo to-stderr >&2", tmp_path, process_groups)
    proc.wait(timeout=5)
    log = (tmp_path / "logs" / "p.log").read_text()
    assert "hello-from-engine" in log and "to-stderr" in log


def test_port_is_free_and_port_owner_with_a_listening_socket(listening_socket):
    sock, port = listening_socket
    assert process.port_is_free("127.0.0.1", port) is False
    owner = process.port_owner(port)
    assert owner is not None and owner.startswith(f"pid {os.getpid()} (")
    sock.close()
    assert process.port_is_free("127.0.0.1", port) is True
    assert process.port_owner(port) is None


def test_a_bound_but_not_listening_socket_is_not_an_owner():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert process.port_owner(port) is None


def test_wait_port_free_returns_once_the_port_is_released(listening_socket):
    sock, port = listening_socket
    assert process.wait_port_free("127.0.0.1", port, timeout_s=0.2) is False
    sock.close()
    assert process.wait_port_free("127.0.0.1", port, timeout_s=2) is True


def test_tail_returns_the_last_lines(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert process.tail(log, 3) == ["line 997", "line 998", "line 999"]
    assert process.tail(log)[-1] == "line 999" and len(process.tail(log)) == 40


def test_tail_of_a_big_file_and_a_missing_file(tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * (1 << 20) + b"\nlast-but-one\nlast\n")
    assert process.tail(log, 2) == ["last-but-one", "last"]
    assert process.tail(tmp_path / "missing.log") == []


@pytest.mark.parametrize("lines", [1, 5])
def test_tail_of_a_short_file(tmp_path, lines):
    log = tmp_path / "short.log"
    log.write_text("only\n")
    assert process.tail(log, lines) == ["only"]


def test_children_that_lost_the_mark_are_still_stopped(tmp_path, process_groups):
    # vLLM's engine core and workers call setproctitle, which overwrites the environment
    # /proc shows; the session and the leader's start time still identify them.
    proc = start("env -u SERVENEST_DEPLOYMENT sleep 300 & env -u SERVENEST_DEPLOYMENT sleep 300 & wait",
                 tmp_path, process_groups)
    ticks = process.start_ticks(proc.pid)
    assert wait_for(lambda: len(process.session_members(proc.pid)) == 3)
    result = process.stop_group(proc.pid, DEPLOYMENT, grace_s=2, leader_start=ticks)
    assert result["signalled"] == 3
    assert wait_for(lambda: not live_group(proc.pid))
    assert not process.session_members(proc.pid)


def test_orphaned_children_of_a_dead_leader_are_stopped(tmp_path, process_groups):
    proc = start("env -u SERVENEST_DEPLOYMENT sleep 300 & env -u SERVENEST_DEPLOYMENT sleep 300 & exit 0",
                 tmp_path, process_groups)
    ticks = process.start_ticks(proc.pid)
    proc.wait(timeout=5)
    assert wait_for(lambda: len(process.session_members(proc.pid)) == 2), "children should outlive the leader"
    result = process.stop_group(proc.pid, DEPLOYMENT, grace_s=2, leader_start=ticks)
    assert result["signalled"] == 2
    assert wait_for(lambda: not process.session_members(proc.pid))


def test_a_leader_with_another_start_time_is_not_ours(tmp_path, process_groups):
    proc = start("sleep 300", tmp_path, process_groups, mark=None)
    ticks = process.start_ticks(proc.pid)
    assert process.group_members(proc.pid, DEPLOYMENT, leader_start=ticks + 1) == []
    assert process.stop_group(proc.pid, DEPLOYMENT, grace_s=1, leader_start=ticks + 1)["signalled"] == 0
    assert process.session_members(proc.pid) == [proc.pid]


def test_live_sigint_gives_a_child_sigint_back_when_its_parent_ignores_it():
    # A script's `cmd &` ignores SIGINT and children inherit it; Prefect's worker stops on
    # SIGTERM by sending itself SIGINT, so a worker started that way would never stop.
    import signal
    import subprocess
    import sys

    from servenest.process import live_sigint

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        inherited = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
        live = subprocess.run(probe, capture_output=True, text=True, check=True,
                              preexec_fn=live_sigint).stdout.strip()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (inherited, live) == ("True", "False")
