"""Emulated GPU hosts: the Cloud Assistant scripts of servenest/cloud/scripts.py really run.

:class:`EmulatedHosts` answers the emulator's ``RunCommand`` for emulated ECS instances
(``CloudEmulator(command_handler=hosts.run)``). Each instance gets a sandbox
``<root>/<instance id>/`` whose ``root/`` stands for the host's ``/root``: every ``/root``
path in a script is rewritten into it, and the script runs with bash (as Cloud Assistant
does, from ``/root``, i.e. ``<sandbox>/root``, which is also ``HOME``). What a GPU host
has and this machine lacks comes from small executables in a shim directory that is first
on the script's ``PATH``; each is this module run by ``sys.executable`` (:func:`shim_main`),
told its host through ``SERVENEST_EMU_*`` variables:

- ``nvidia-smi``: the instance type's GPUs (``-L``, the default table, ``--query-gpu``).
- ``modelscope download``: the built-in tiny model in place of the requested one (generated
  once per root, then copied), with injectable failures (:attr:`EmulatedHosts.fail_downloads`).
- ``sleep``: scaled by :attr:`EmulatedHosts.sleep_scale`, so retry back-offs can be short.
- ``docker run/rm/inspect/logs/exec/ps``: a "container" is the entrypoint the launch script
  wrote, read through its bind mounts: vLLM's ``exec`` line starts a real engine on this
  instance's own loopback address (the CPU vLLM, or the no-op server with ``engine="noop"``)
  in its own session; a Ray worker is a sleeping placeholder; SGLang cannot run here and
  shows as exited. State lives in ``<sandbox>/containers/NAME.json``.

``python3`` is not shimmed. The API key only ever exists in the key file the scripts write,
in the engine's environment (vLLM) and in the no-op server's memory (``--api-key-file``);
scripts reach bash through an in-memory file, not argv or disk.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from servenest import process
from servenest.locks import file_lock
from servenest.rehearsal import packages

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_SCRIPT = REPO_ROOT / "servenest" / "engines" / "tiny_model.py"
# On every host's PATH; the tools packages provide (packages.INSTALLABLE) appear in the
# host's own <sandbox>/usr/bin once installed (a custom image starts with them).
SHIM_NAMES = ("modelscope", "sleep", "df", *packages.BASE_TOOLS)
# The host's filesystem roots that live in its sandbox (``/root`` is <sandbox>/root).
HOST_ROOTS = ("root", "etc", "var")
OS_AND_DOCKER_BYTES = 10 * 10**9  # what the image and docker take of the system disk
DOWNLOADS_LOG = ".modelscope-downloads"  # under the root: <instance>\t<model>\t<bytes> per download
OUTPUT_LIMIT = 24 * 1024  # Cloud Assistant keeps the last 24 KB of a command's output
TIMEOUT_EXIT = 124
STOP_GRACE_S = 5.0
PORT_FREE_WAIT_S = 10.0
NOTE = "servenest rehearsal:"
SGLANG_MESSAGE = f"{NOTE} SGLang cannot run on an emulated host; use engine.kind vllm to rehearse"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
SGLANG_MODULE = "sglang.launch_server"
# Flags that only mean something on GPUs (or, for --max-model-len, exceed the tiny model).
GPU_ONLY_FLAGS = frozenset({
    "--tensor-parallel-size", "--pipeline-parallel-size", "--gpu-memory-utilization",
    "--max-model-len", "--distributed-executor-backend",
})
# These name the GPU hosts' NICs and RDMA; on this machine they would break gloo's socket.
_HOST_NETWORK_ENV = ("NCCL_", "GLOO_")

ENV_HOST_DIR = "SERVENEST_EMU_HOST_DIR"
ENV_ROOT = "SERVENEST_EMU_ROOT"
ENV_ADDRESS = "SERVENEST_EMU_ADDRESS"
ENV_ENGINE = "SERVENEST_EMU_ENGINE"
ENV_ENGINE_PYTHON = "SERVENEST_EMU_ENGINE_PYTHON"
ENV_SLEEP_SCALE = "SERVENEST_EMU_SLEEP_SCALE"
# What a script inherits from this process (never its credentials or proxies).
_KEEP_ENV = ("LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "OMP_NUM_THREADS",
             "VLLM_CPU_OMP_THREADS_BIND")

_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHELL_SAFE = re.compile(r"[\w@%+=:,./-]+")
_ROOT_PATH = re.compile(r"(?<![\w./-])/(root|etc|var)(?![\w.-])")
_KEY_READ = re.compile(r'^([A-Za-z_]\w*)="\$\(cat (.+)\)"$')
_TEMPLATE_FIELD = re.compile(r"\{\{\s*\.([\w.]+)\s*\}\}")


# == the orchestrator's side ================================================================
class EmulatedHosts:
    """Emulated ECS GPU hosts that run Cloud Assistant scripts for real; see the module doc.

    Set :attr:`address_of` (instance id -> its private IP, a distinct loopback address) and
    optionally :attr:`instance_type_of` (instance id -> ECS type, for the GPU count).
    """

    def __init__(
        self, root: Path | str, engine: str = "vllm", engine_python: str | Path | None = None,
        *, timeout_s: float = 600.0, sleep_scale: float = 1.0,
    ):
        if engine not in ("vllm", "noop"):
            raise ValueError(f"engine must be 'vllm' or 'noop', not {engine!r}")
        self.root = Path(root).resolve()
        # The root ends up unquoted inside rewritten scripts (see _rewrite_root).
        if not _SHELL_SAFE.fullmatch(str(self.root)):
            raise ValueError(f"root {self.root} must be a path without spaces or shell characters")
        if engine_python is None:
            from servenest.engines import environment

            engine_python = environment.managed_python()
        self.engine = engine
        self.engine_python = str(engine_python)
        self.timeout_s = timeout_s
        self.sleep_scale = sleep_scale
        self.address_of: Callable[[str], str] = lambda _iid: "127.0.0.1"
        self.instance_type_of: Callable[[str], str | None] = lambda _iid: None
        # The instance's image: a public OS image starts bare; None or a custom image id
        # starts with the driver, docker and nvidia-container-toolkit installed.
        self.image_of: Callable[[str], str | None] = lambda _iid: None
        self.system_disk_gb_of: Callable[[str], int | None] = lambda _iid: None
        # (size GiB, snapshot files or None) of the instance's data disk, or None.
        self.data_disk_of: Callable[[str], tuple[int, Path | None] | None] = lambda _iid: None
        self._lock = threading.Lock()
        self._instance_locks: dict[str, threading.Lock] = {}
        self._running: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, list[str]] = {}
        self._bash = shutil.which("bash") or "/bin/bash"
        self.root.mkdir(parents=True, exist_ok=True)
        self.shim_dir = _write_shims(self.root / ".bin")
        self.system_bin = _system_bin(self.root / ".sysbin", self.shim_dir)
        atexit.register(self.close)  # a leaked engine outlives everything else

    # -- what callers read ---------------------------------------------------------------
    def sandbox(self, instance_id: str) -> Path:
        if not _INSTANCE_ID.fullmatch(instance_id):
            raise ValueError(f"not an instance id: {instance_id!r}")
        return self.root / instance_id

    def commands(self, instance_id: str) -> list[str]:
        """Every script run on the host, as given (before the /root rewrite), in order."""
        return list(self._commands.get(instance_id, []))

    def containers(self, instance_id: str) -> dict[str, dict]:
        """The host's containers: name -> recorded state plus its current ``status``."""
        out = {}
        for path in sorted((self.sandbox(instance_id) / "containers").glob("*.json")):
            state = _read_json(path)
            if state is not None:
                state["status"], state["exit_code"] = container_status(state)
                out[state["name"]] = state
        return out

    def set_fault(self, name: str, value: int) -> None:
        """Faults every host sees: ``fail-driver-install`` (next N driver installs fail),
        ``nouveau`` (the driver loads only after a reboot), ``missing-gpus`` (nvidia-smi
        shows N fewer), ``fabric-down`` (nvidia-fabricmanager failed), ``disk-free-gb``
        (df reports this much free)."""
        packages.write_fault(self.root, name, value)

    def bytes_downloaded(self) -> int:
        """What every host's ``modelscope download`` moved so far (the built-in model's files)."""
        try:
            lines = (self.root / DOWNLOADS_LOG).read_text().splitlines()
        except OSError:
            return 0
        return sum(int(line.rsplit("\t", 1)[1]) for line in lines if line.strip())

    @property
    def fail_downloads(self) -> int:
        """How many of the next ``modelscope download`` calls (on any host) fail."""
        with file_lock(self.root / ".faults" / "lock"):
            return _read_int(self.root / ".faults" / "fail-downloads")

    @fail_downloads.setter
    def fail_downloads(self, count: int) -> None:
        with file_lock(self.root / ".faults" / "lock"):
            _write_text(self.root / ".faults" / "fail-downloads", str(int(count)))

    # -- Cloud Assistant ------------------------------------------------------------------
    def run(self, script: str, instance_id: str) -> tuple[int, str]:
        """Run one command on the host: (exit code, the last 24 KB of stdout+stderr)."""
        sandbox = self.sandbox(instance_id)
        # Commands on one host run one at a time, so its docker state needs no other lock.
        with self._instance_lock(instance_id):
            self._commands.setdefault(instance_id, []).append(script)
            self._prepare(instance_id, sandbox)
            return self._execute(instance_id, sandbox, _rewrite_root(script, sandbox / "root"))

    def _instance_lock(self, instance_id: str) -> threading.Lock:
        with self._lock:
            return self._instance_locks.setdefault(instance_id, threading.Lock())

    def _prepare(self, instance_id: str, sandbox: Path) -> None:
        address = str(ipaddress.ip_address(self.address_of(instance_id)))
        (sandbox / "root").mkdir(parents=True, exist_ok=True)
        (sandbox / "containers").mkdir(exist_ok=True)
        info = {"instance_id": instance_id, "address": address, **_gpu_info(self.instance_type_of(instance_id)),
                "system_disk_gb": self.system_disk_gb_of(instance_id) or 200}
        _write_json(sandbox / "host.json", info)
        packages.prepare_image(sandbox, packages.is_bare_image(self.image_of(instance_id)), _write_shim,
                               self.data_disk_of(instance_id))

    def _execute(self, instance_id: str, sandbox: Path, script: str) -> tuple[int, str]:
        # An in-memory file: the key-delivery script must reach neither argv nor the disk.
        fd = os.memfd_create("cloud-assistant-command")
        try:
            _write_all(fd, script.encode())
            with tempfile.TemporaryFile() as out:
                proc = subprocess.Popen(
                    [self._bash, f"/dev/fd/{fd}"], cwd=sandbox / "root", env=self._env(sandbox),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=(fd,),
                )
                with self._lock:
                    self._running[instance_id] = proc
                try:
                    code, note = self._wait(proc)
                finally:
                    with self._lock:
                        self._running.pop(instance_id, None)
                # What the host would print: its own paths, not the sandbox's.
                text = _output_tail(out, note)
                for top in HOST_ROOTS:
                    text = text.replace(str(sandbox / top), f"/{top}")
                return code, text
        finally:
            os.close(fd)

    def _wait(self, proc: subprocess.Popen) -> tuple[int, str]:
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            return TIMEOUT_EXIT, f"\n{NOTE} the command exceeded its timeout of {self.timeout_s:g} s and was killed\n"
        return (128 - code if code < 0 else code), ""

    def _env(self, sandbox: Path) -> dict[str, str]:
        info = _read_json(sandbox / "host.json") or {}
        env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        env.update({
            "HOME": str(sandbox / "root"),
            "PATH": f"{packages.bin_dir(sandbox)}:{self.shim_dir}:"
                    f"{self.system_bin}",
            ENV_HOST_DIR: str(sandbox), ENV_ROOT: str(self.root), ENV_ADDRESS: info["address"],
            ENV_ENGINE: self.engine, ENV_ENGINE_PYTHON: self.engine_python,
            ENV_SLEEP_SCALE: repr(float(self.sleep_scale)),
        })
        return env

    # -- instances going away -------------------------------------------------------------
    def release(self, instance_ids: Iterable[str]) -> None:
        """The instances were deleted: stop their commands and containers, drop their sandboxes."""
        for instance_id in instance_ids:
            try:
                self._release_one(instance_id)
            except Exception:  # the emulator's delete path must go on; the next sweep retries
                log.exception("releasing emulated host %s", instance_id)

    def _release_one(self, instance_id: str) -> None:
        sandbox = self.sandbox(instance_id)
        with self._lock:
            running = self._running.get(instance_id)
        if running is not None:  # a command still running on a host that no longer exists
            _kill_session(running)
        with self._instance_lock(instance_id):
            for path in sorted((sandbox / "containers").glob("*.json")):
                state = _read_json(path)
                if state is not None:
                    stop_container(state)
            # Also whatever a killed `docker run` started but never recorded.
            stop_marked(container_mark(sandbox))
            shutil.rmtree(sandbox, ignore_errors=True)

    def close(self) -> None:
        """Release every host under the root (safe to call twice)."""
        found = {p.name for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")}
        self.release(sorted(found | set(self._commands)))
        atexit.unregister(self.close)


def _write_shims(shim_dir: Path) -> Path:
    for name in SHIM_NAMES:
        _write_shim(shim_dir, name)
    return shim_dir


def _write_shim(shim_dir: Path, name: str) -> None:
    shim_dir.mkdir(parents=True, exist_ok=True)
    path = shim_dir / name
    _write_text(path, (
        f"#!{sys.executable}\n"
        f"# ServeNest emulated-host shim for {name}; see servenest/rehearsal/hosts.py\n"
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from servenest.rehearsal.hosts import shim_main\n"
        f"sys.exit(shim_main({name!r}, sys.argv[1:]))\n"
    ))
    path.chmod(0o755)


def _system_bin(target: Path, shim_dir: Path) -> Path:
    """This machine's PATH as one directory of links, less what a bare host lacks (a
    docker or nvidia-smi of this machine must not make a bare host look installed)."""
    hidden = set(packages.INSTALLABLE) | set(SHIM_NAMES)
    target.mkdir(parents=True, exist_ok=True)
    seen = {p.name for p in target.iterdir()}
    for directory in _without(os.environ.get("PATH", os.defpath), shim_dir).split(":"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if entry.name in seen or entry.name in hidden or not os.access(entry.path, os.X_OK):
                    continue
                seen.add(entry.name)
                with contextlib.suppress(FileExistsError):
                    (target / entry.name).symlink_to(entry.path)
    return target


def _rewrite_root(script: str, home: Path) -> str:
    """Every ``/root``, ``/etc`` and ``/var`` path of the host, inside the sandbox (``home``
    is ``<sandbox>/root``; ``/rootfs`` or ``/etcd`` are left alone)."""
    return _ROOT_PATH.sub(lambda m: str(home.parent / m.group(1)), script)


def _gpu_info(instance_type: str | None) -> dict:
    from servenest.catalog import GPU_KINDS, INSTANCE_TYPES

    itype = INSTANCE_TYPES.get(instance_type or "")
    if itype is None:  # unknown to the catalog: one A10, like the smallest gn7i
        return {"instance_type": instance_type, "gpu_name": "NVIDIA A10", "gpu_count": 1,
                "gpu_memory_mib": 24 * 1024, "vcpu": 8}
    name = itype.gpu if itype.gpu == "PPU" else f"NVIDIA {itype.gpu}"
    return {"instance_type": instance_type, "gpu_name": name, "gpu_count": itype.gpu_count,
            "gpu_memory_mib": GPU_KINDS[itype.gpu].memory_gib * 1024, "vcpu": itype.vcpu}


def _output_tail(out, note: str) -> str:
    room = OUTPUT_LIMIT - len(note.encode())
    out.seek(0, os.SEEK_END)
    out.seek(max(0, out.tell() - room))
    return out.read().decode(errors="replace") + note


def _kill_session(proc: subprocess.Popen) -> None:
    # The command's bash and its shims share its session; engines have sessions of their own.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _without(path_var: str, directory: Path) -> str:
    return ":".join(p for p in path_var.split(":") if p and p != str(directory))


# == containers: shared by the docker shim and release() ====================================
def container_mark(sandbox: Path) -> str:
    """The ``SERVENEST_DEPLOYMENT`` value of a host's container processes."""
    return f"emulated-host:{sandbox}"


def container_status(state: dict) -> tuple[str, int]:
    """('running', 0) or ('exited', code) like ``docker inspect``."""
    pid = state.get("pid")
    if pid is None:
        return "exited", int(state.get("exit_code") or 0)
    if process.state(pid).alive and process.start_ticks(pid) == state.get("start_ticks"):
        # Between two runs its restart policy is waiting out the back-off delay.
        return ("restarting", 0) if Path(state["exit_file"] + ".waiting").exists() else ("running", 0)
    try:
        return "exited", int(Path(state["exit_file"]).read_text().strip())
    except (OSError, ValueError):
        return "exited", 137  # killed before the wrapper could record a code


def stop_container(state: dict) -> None:
    """TERM, then KILL, the container's session; wait until its port is free."""
    if state.get("pgid"):
        process.stop_group(state["pgid"], state["mark"], STOP_GRACE_S, state.get("start_ticks"))
    if state.get("port"):
        process.wait_port_free(state["host"], state["port"], PORT_FREE_WAIT_S)


def stop_marked(mark: str) -> None:
    """Stop every session that holds a process carrying ``mark`` in its environment."""
    needle = f"{process.MARK_ENV}={mark}".encode()
    sessions = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                sessions.add(int(stat[stat.rindex(")") + 2:].split()[3]))
        except (OSError, ValueError):
            continue
    for sid in sessions:
        process.stop_group(sid, mark, STOP_GRACE_S)


# == the shims' side =========================================================================
class _Fail(Exception):
    """A shim exits with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Host:
    dir: Path
    root: Path
    address: str
    engine: str
    engine_python: str
    sleep_scale: float

    @classmethod
    def from_env(cls) -> _Host:
        env = os.environ
        return cls(Path(env[ENV_HOST_DIR]), Path(env[ENV_ROOT]), env[ENV_ADDRESS], env[ENV_ENGINE],
                   env[ENV_ENGINE_PYTHON], float(env.get(ENV_SLEEP_SCALE, "1")))

    @property
    def home(self) -> Path:
        return self.dir / "root"

    @property
    def containers(self) -> Path:
        return self.dir / "containers"

    @property
    def info(self) -> dict:
        return _read_json(self.dir / "host.json") or _gpu_info(None)

    def state_path(self, name: str) -> Path:
        return self.containers / f"{name}.json"

    def load(self, name: str) -> dict | None:
        return _read_json(self.state_path(name)) if _INSTANCE_ID.fullmatch(name) else None


def shim_main(name: str, argv: list[str]) -> int:
    """Entry point of the shim executables."""
    handlers = {"docker": _docker, "nvidia-smi": _nvidia_smi, "modelscope": _modelscope, "sleep": _sleep,
                "df": _df}
    try:
        host = _Host.from_env()
        if name in packages.HANDLERS:
            return packages.HANDLERS[name](host.dir, host.root, argv, _write_shim)
        return handlers[name](host, argv)
    except _Fail as exc:
        print(str(exc), file=sys.stderr)
        return exc.code


# -- sleep -----------------------------------------------------------------------------------
_SLEEP_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _sleep(host: _Host, argv: list[str]) -> int:
    total = 0.0
    for word in argv:
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)", word)
        if not m:
            raise _Fail(1, f"sleep: invalid time interval '{word}'")
        total += float(m[1]) * _SLEEP_UNITS[m[2]]
    if not argv:
        raise _Fail(1, "sleep: missing operand")
    time.sleep(total * host.sleep_scale)
    return 0


# -- df --------------------------------------------------------------------------------------
def _df(host: _Host, argv: list[str]) -> int:
    """``df -B1 --output=avail PATH``: the instance's system disk, less the OS, docker and
    what the host's /root holds (or the ``disk-free-gb`` fault)."""
    if "--output=avail" not in argv:
        raise _Fail(1, f"{NOTE} only `df -B1 --output=avail PATH` is emulated")
    forced = packages.read_fault(host.root, "disk-free-gb")
    on_data = packages.data_disk_free(host.dir)
    if forced:
        free = forced * 10**9
    elif on_data is not None and Path(argv[-1]).is_relative_to(host.dir.joinpath(*packages.WEIGHTS_DIR)):
        free = on_data
    else:
        used = sum(p.stat().st_size for p in host.home.rglob("*") if p.is_file() and not p.is_symlink())
        free = max(0, int(host.info.get("system_disk_gb") or 200) * 10**9 - OS_AND_DOCKER_BYTES - used)
    print(f"{'Avail':>15}\n{free:>15}")
    return 0


# -- nvidia-smi ------------------------------------------------------------------------------
def _gpu_uuid(host: _Host, index: int) -> str:
    h = hashlib.sha256(f"{host.dir.name}/{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _nvidia_smi(host: _Host, argv: list[str]) -> int:
    if not packages.module_loaded(host.dir):
        raise _Fail(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                       "Make sure that the latest NVIDIA driver is installed and running.")
    info = dict(host.info)
    info["gpu_count"] = max(0, info["gpu_count"] - packages.read_fault(host.root, "missing-gpus"))
    info["driver"] = packages.driver_version(host.dir) or packages.PREPARED_DRIVER
    if "-L" in argv or "--list-gpus" in argv:
        for i in range(info["gpu_count"]):
            print(f"GPU {i}: {info['gpu_name']} (UUID: {_gpu_uuid(host, i)})")
        return 0
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    if query is not None:
        return _nvidia_query(host, info, query.split(","), argv)
    print(_nvidia_table(info))
    return 0


def _nvidia_query(host: _Host, info: dict, fields: list[str], argv: list[str]) -> int:
    fmt = next((a.split("=", 1)[1] for a in argv if a.startswith("--format=")), "csv")
    units = "nounits" not in fmt
    mib = " MiB" if units else ""
    values = {
        "index": lambda i: str(i), "name": lambda i: info["gpu_name"],
        "uuid": lambda i: _gpu_uuid(host, i), "count": lambda i: str(info["gpu_count"]),
        "memory.total": lambda i: f"{info['gpu_memory_mib']}{mib}",
        "memory.used": lambda i: f"0{mib}", "memory.free": lambda i: f"{info['gpu_memory_mib']}{mib}",
        "driver_version": lambda i: info["driver"],
    }
    unknown = [f for f in fields if f.strip() not in values]
    if unknown:
        raise _Fail(2, f'Field "{unknown[0]}" is not a valid field to query.')
    if "noheader" not in fmt:
        print(", ".join(f + (" [MiB]" if f.startswith("memory.") and units else "") for f in fields))
    for i in range(info["gpu_count"]):
        print(", ".join(values[f.strip()](i) for f in fields))
    return 0


def _nvidia_table(info: dict) -> str:
    def row(*cells: str) -> str:  # nvidia-smi's three columns, 41 + 24 + 22 wide
        return "|" + "|".join(c.ljust(w)[:w] for c, w in zip(cells, (41, 24, 22), strict=True)) + "|"

    rule = "+" + "+".join("-" * w for w in (41, 24, 22)) + "+"
    wide = "+" + "-" * 89 + "+"
    lines = [
        time.strftime("%a %b %d %H:%M:%S %Y"), wide,
        f"| NVIDIA-SMI {info['driver']}" + f"Driver Version: {info['driver']}".rjust(40) + "CUDA Version: 12.4".rjust(23) + "     |",
        rule.replace("+", "|", 1)[:-1] + "|",
        row(" GPU  Name                 Persistence-M ", " Bus-Id          Disp.A ", " Volatile Uncorr. ECC "),
        row(" Fan  Temp   Perf          Pwr:Usage/Cap ", "           Memory-Usage ", " GPU-Util  Compute M. "),
        rule.replace("-", "="),
    ]
    memory = f"0MiB / {info['gpu_memory_mib']}MiB".rjust(23)
    for i in range(info["gpu_count"]):
        lines += [
            row(f" {i:>3}  {info['gpu_name']:<30}On  ", f"   00000000:00:{7 + i:02X}.0 Off ", "0 ".rjust(22)),
            row(" N/A   30C    P0             60W /  150W ", f"{memory} ", "      0%      Default "),
            rule,
        ]
    lines += ["", wide, "| Processes:".ljust(90) + "|", "|  No running processes found".ljust(90) + "|", wide]
    return "\n".join(lines)


# -- modelscope ------------------------------------------------------------------------------
def _modelscope(host: _Host, argv: list[str]) -> int:
    model, revision, local_dir = _parse_download(argv)
    dest = Path(local_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if _take_download_failure(host.root):
        _leave_partial(dest)  # like an interrupted transfer, for the next attempt to resume
        raise _Fail(1, f"{NOTE} injected download failure for {model} (fail_downloads)")
    cache = _tiny_model(host)
    print(f"{NOTE} this host serves the built-in tiny model in place of {model}"
          + (f"@{revision}" if revision else ""))
    _copy_model(cache, dest)
    moved = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    with file_lock(host.root / ".faults" / "lock"), open(host.root / DOWNLOADS_LOG, "a") as fh:
        fh.write(f"{host.dir.name}\t{model}\t{moved}\n")
    print(f"Successfully Downloaded from model {model}.")
    return 0


def _parse_download(argv: list[str]) -> tuple[str, str | None, str]:
    if not argv or argv[0] != "download":
        raise _Fail(2, "usage: modelscope download --model MODEL [--revision REV] --local_dir DIR "
                       f"({NOTE} only `download` is emulated)")
    opts: dict[str, str] = {}
    words = argv[1:]
    while words:
        flag = words.pop(0)
        key = flag.lstrip("-").replace("-", "_")
        if key not in ("model", "revision", "local_dir") or not words:
            raise _Fail(2, f"modelscope download: unsupported argument {flag!r}")
        opts[key] = words.pop(0)
    if "model" not in opts or "local_dir" not in opts:
        raise _Fail(2, "modelscope download: --model and --local_dir are required here")
    return opts["model"], opts.get("revision"), opts["local_dir"]


def _take_download_failure(root: Path) -> bool:
    counter = root / ".faults" / "fail-downloads"
    with file_lock(root / ".faults" / "lock"):
        left = _read_int(counter)
        if left <= 0:
            return False
        _write_text(counter, str(left - 1))
        return True


def _leave_partial(dest: Path) -> None:
    temp = dest / "._____temp"
    temp.mkdir(exist_ok=True)
    (temp / "model.safetensors").write_bytes(b"\0" * 1024)


def _tiny_model(host: _Host) -> Path:
    """The tiny model for this engine, built once per root (generation takes seconds)."""
    cache = host.root / ".cache" / f"tiny-model-{host.engine}"
    with file_lock(host.root / ".cache" / "tiny-model.lock"):
        if not (cache / "config.json").exists():
            if host.engine == "vllm":
                _generate_tiny_model(host.engine_python, cache)
            else:
                _write_fake_model(cache)
    return cache


def _generate_tiny_model(engine_python: str, cache: Path) -> None:
    argv = [engine_python, str(TINY_MODEL_SCRIPT), str(cache), "--seed", "0", "--force"]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise _Fail(1, f"{NOTE} generating the tiny model with {engine_python} failed:\n{tail}")


def _write_fake_model(cache: Path) -> None:
    """Small deterministic files shaped like a checkpoint (the no-op server never reads them)."""
    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 128,
              "num_hidden_layers": 2, "vocab_size": 1000, "servenest_rehearsal": True}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "generation_config.json").write_text('{"max_new_tokens": 16}\n')
    (tmp / "tokenizer_config.json").write_text('{"model_max_length": 2048}\n')
    data = b"".join(hashlib.sha256(f"servenest-rehearsal-{i}".encode()).digest() for i in range(2048))
    header = json.dumps({"weight": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}})
    blob = len(header).to_bytes(8, "little") + header.encode() + data
    (tmp / "model.safetensors").write_bytes(blob)
    os.replace(tmp, cache)


def _copy_model(cache: Path, dest: Path) -> None:
    """Every file again (a resumed download ends with the hub's content, whatever was there)."""
    temp = dest / "._____temp"
    names = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    for rel in names:
        staged = temp / rel
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache / rel, staged)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest / rel)
    shutil.rmtree(temp, ignore_errors=True)
    # The hub client's own bookkeeping, which the staging manifest must leave out.
    _write_text(dest / ".msc", json.dumps([str(r) for r in names]) + "\n")
    _write_text(dest / ".mv", "master\n")


# -- docker: run -------------------------------------------------------------------------------
_RUN_FLAGS = frozenset({"-d", "--detach", "-t", "--tty", "-i", "--interactive", "-it", "-ti",
                        "-dt", "-td", "--privileged", "--rm", "--init"})
_RUN_OPTIONS = frozenset({"--name", "--gpus", "--ulimit", "-v", "--volume", "--entrypoint", "-e",
                          "--env", "--net", "--network", "--ipc", "--cap-add", "--shm-size", "-p",
                          "--publish", "-w", "--workdir", "--restart", "--label", "-l", "-u", "--user"})


@dataclass
class _Run:
    name: str
    image: str
    command: list[str]
    entrypoint: str | None = None
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (host path, container path)
    restart: str = "no"  # docker's --restart policy

    def host_path(self, container_path: str) -> Path | None:
        """Where a container path is on the host, through the longest matching bind mount."""
        best = None
        for src, dst in self.mounts:
            base = dst.rstrip("/")
            if (container_path == dst or container_path.startswith(base + "/")) and (
                    best is None or len(dst) > len(best[1])):
                best = (src, dst)
        return Path(best[0] + container_path[len(best[1].rstrip("/")):]) if best else None


@dataclass
class _Entrypoint:
    env: dict[str, str] = field(default_factory=dict)
    key_var: str | None = None
    key_path: str | None = None  # in the container
    ray_head: bool = False
    exec_words: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """What the container runs: a process (``argv``) or nothing (exited at once)."""

    role: str  # engine | ray-worker | exited
    notes: list[str]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    exit_code: int | None = None
    ray_head: str | None = None
    is_ray_head: bool = False


def _parse_run(args: list[str]) -> _Run:
    opts: dict[str, str] = {}
    mounts = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        word = args[i]
        i += 1
        opt, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if opt in _RUN_FLAGS and not eq:
            continue
        if opt not in _RUN_OPTIONS:
            raise _Fail(125, f"unknown flag: {opt}\nSee 'docker run --help'.")
        if not eq:
            if i >= len(args):
                raise _Fail(125, f"flag needs an argument: {opt}\nSee 'docker run --help'.")
            value = args[i]
            i += 1
        if opt in ("-v", "--volume"):
            mounts.append(_parse_mount(value))
        else:
            opts[opt] = value
    if i >= len(args):
        raise _Fail(125, '"docker run" requires at least 1 argument.\nSee \'docker run --help\'.')
    name = opts.get("--name") or f"emulated_{uuid.uuid4().hex[:8]}"
    if not _INSTANCE_ID.fullmatch(name):
        raise _Fail(125, f'docker: Error response from daemon: Invalid container name ({name}).')
    restart = opts.get("--restart", "no")
    if not _RESTART_POLICY.fullmatch(restart):
        raise _Fail(125, f"docker: invalid restart policy: {restart}\nSee 'docker run --help'.")
    return _Run(name, args[i], args[i + 1:], opts.get("--entrypoint"), mounts, restart)


_RESTART_POLICY = re.compile(r"no|always|unless-stopped|on-failure(:\d+)?")


def _parse_mount(value: str) -> tuple[str, str]:
    parts = value.split(":")
    if len(parts) < 2 or not parts[0].startswith("/"):
        raise _Fail(125, f"{NOTE} only bind mounts (-v /host/path:/container/path[:ro]) are emulated: {value}")
    return parts[0], parts[1]


def _docker_run(host: _Host, args: list[str]) -> int:
    run = _parse_run(args)
    if any(a == "--gpus" or a.startswith("--gpus=") for a in args) and not packages.runtime_configured(host.dir):
        # What docker says when nvidia-container-toolkit is not its runtime.
        raise _Fail(125, 'docker: Error response from daemon: could not select device driver "" with '
                         "capabilities: [[gpu]].")
    if run.entrypoint == "nvidia-smi":  # the readiness check: the GPUs as the container sees them
        return _nvidia_smi(host, run.command)
    existing = host.load(run.name)
    if existing is not None:
        raise _Fail(125, f'docker: Error response from daemon: Conflict. The container name "/{run.name}" '
                         f'is already in use by container "{existing["id"]}". You have to remove '
                         "(or rename) that container to be able to reuse that name.")
    for src, _dst in run.mounts:
        if not Path(src).exists():
            raise _Fail(125, "docker: Error response from daemon: invalid mount config for type "
                             f'"bind": bind source path does not exist: {src}')
    plan = _plan(host, run, _read_entrypoint(run))
    state = _start(host, run, plan)
    state["run_args"] = args  # what `docker restart` starts again (the key stays in its file)
    _write_json(host.state_path(run.name), state)
    print(state["id"])
    return 0


def _read_entrypoint(run: _Run) -> _Entrypoint:
    if run.entrypoint not in ("/bin/bash", "bash") or len(run.command) != 1:
        raise _Fail(125, f"{NOTE} only `--entrypoint /bin/bash IMAGE SCRIPT` containers are emulated")
    path = run.host_path(run.command[0])
    try:
        text = path.read_text() if path else None
    except OSError:
        text = None
    if text is None:
        raise _Fail(127, f"docker: Error response from daemon: failed to create task: exec: "
                         f'"{run.command[0]}": no such file or directory (it must be bind-mounted)')
    return _parse_entrypoint(text)


def _parse_entrypoint(text: str) -> _Entrypoint:
    entry = _Entrypoint()
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        key = _KEY_READ.match(line)
        if line.startswith("export ") and "=" in line:
            for word in shlex.split(line)[1:]:
                name, _, value = word.partition("=")
                entry.env[name] = value
        elif key:
            entry.key_var, entry.key_path = key[1], shlex.split(key[2])[0]
        elif line.startswith("ray start") and "--head" in line.split():
            entry.ray_head = True
        elif line.startswith("exec "):
            entry.exec_words = shlex.split(line)[1:]
    return entry


def _exited(code: int, *lines: str) -> _Plan:
    return _Plan("exited", list(lines), exit_code=code)


def _plan(host: _Host, run: _Run, entry: _Entrypoint) -> _Plan:
    words = entry.exec_words
    module = words[2] if len(words) > 2 and words[0].startswith("python") and words[1] == "-m" else None
    if words[:2] == ["ray", "start"]:
        return _ray_worker_plan(host, words)
    if module == SGLANG_MODULE:
        return _exited(1, SGLANG_MESSAGE)
    if module != VLLM_MODULE:
        return _exited(127, f"{NOTE} cannot run `{shlex.join(words[:3]) or '(no exec line)'}` on an emulated host")
    key = None
    if entry.key_var:  # the entrypoint's `cat` of the mounted key file, under set -e
        key, failure = _read_key(run, entry.key_path)
        if failure:
            return _exited(1, failure)
    plan = (_noop_plan if host.engine == "noop" else _vllm_plan)(host, run, words[3:], entry, key)
    if entry.ray_head:
        plan.is_ray_head = True
        plan.notes.append(f"{NOTE} Ray head (placeholder) at {host.address}:6379; the engine runs on this host alone")
    return plan


def _read_key(run: _Run, container_path: str | None) -> tuple[str | None, str | None]:
    path = run.host_path(container_path or "")
    try:
        key = path.read_text().strip() if path else ""
    except OSError:
        key = ""
    if not key:
        return None, f"cat: {container_path}: No such file or directory"
    return key, None


def _flag_groups(words: list[str]) -> list[list[str]]:
    """[['--model', 'p'], ['--trust-remote-code'], ...]; ``--k=v`` becomes ['--k', 'v']."""
    groups: list[list[str]] = []
    for word in words:
        if word.startswith("--"):
            groups.append(word.split("=", 1))
        elif groups:
            groups[-1].append(word)
        else:
            groups.append([word])
    return groups


def _value(groups: list[list[str]], flag: str) -> str | None:
    return next((g[1] for g in groups if g[0] == flag and len(g) > 1), None)


def _port(groups: list[list[str]]) -> int:
    try:
        return int(_value(groups, "--port") or 8000)
    except ValueError:
        raise _Fail(125, f"{NOTE} --port must be a number") from None


def _noop_plan(host: _Host, run: _Run, args: list[str], entry: _Entrypoint, key: str | None) -> _Plan:
    groups = _flag_groups(args)
    port = _port(groups)
    served = _value(groups, "--served-model-name") or _value(groups, "--model") or "noop"
    argv = [sys.executable, "-m", "servenest.rehearsal.openai_noop", "--host", host.address,
            "--port", str(port), "--model", served]
    if key is not None:  # the server reads the file itself: the key stays off argv
        argv += ["--api-key-file", str(run.host_path(entry.key_path or ""))]
    env = {**_container_env(host, entry), "PYTHONPATH": str(REPO_ROOT)}
    note = f"{NOTE} the no-op server stands in for {VLLM_MODULE} on {host.address}:{port}"
    return _Plan("engine", [note], argv, env, port)


def _vllm_plan(host: _Host, run: _Run, args: list[str], entry: _Entrypoint, key: str | None) -> _Plan:
    from servenest.topology.local import _inherited_env

    kept, dropped = [], []
    for group in _flag_groups(args):
        flag = group[0]
        if flag in GPU_ONLY_FLAGS:
            dropped.append(flag)
        elif flag == "--host":
            kept += ["--host", host.address]  # instances share this machine: never 0.0.0.0
        elif flag == "--model" and len(group) > 1:
            kept += ["--model", str(run.host_path(group[1]) or group[1])]
        else:
            kept += group
    env = {**_inherited_env(), **_container_env(host, entry), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "1", "HF_HUB_OFFLINE": "1"}
    if key is not None:
        env[entry.key_var] = key
    note = f"{NOTE} the CPU vLLM serves on {host.address}; dropped GPU-only flags: {', '.join(dropped) or 'none'}"
    return _Plan("engine", [note], [host.engine_python, "-m", VLLM_MODULE, *kept], env,
                 _port(_flag_groups(kept)))


def _container_env(host: _Host, entry: _Entrypoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k == "PATH"}
    env["PATH"] = _without(_without(env.get("PATH", os.defpath), host.root / ".bin"), packages.bin_dir(host.dir))
    env["HOME"] = str(host.home)
    env.update({k: v for k, v in entry.env.items() if not k.startswith(_HOST_NETWORK_ENV)})
    env[process.MARK_ENV] = container_mark(host.dir)
    return env


def _ray_worker_plan(host: _Host, words: list[str]) -> _Plan:
    address = _value(_flag_groups(words[2:]), "--address")
    if not address:
        return _exited(1, f"{NOTE} `ray start` without --address (only workers are emulated this way)")
    head = address.rsplit(":", 1)[0]
    env = _container_env(host, _Entrypoint())
    argv = [sys.executable, "-c", "import time; time.sleep(1e9)"]
    note = f"{NOTE} Ray worker placeholder joined the head at {address}"
    return _Plan("ray-worker", [note], argv, env, ray_head=head)


# Leads the container's session: runs the engine, records its exit code, and applies the
# restart policy as docker's daemon does: again after a delay that starts at 100 ms and
# doubles (up to a minute), reset once a run lasted 10 s; RestartCount counts these
# (docs.docker.com/engine/containers/start-containers-automatically/).
_SUPERVISOR = r"""f=$1; policy=$2; shift 2; n=0; d=100
while :; do
  t=$SECONDS; c=0; "$@" || c=$?; echo "$c" > "$f"
  case "$policy" in
    no) exit "$c" ;;
    on-failure*) [ "$c" -eq 0 ] && exit 0
      max=${policy#on-failure}; max=${max#:}
      [ -n "$max" ] && [ "$n" -ge "$max" ] && exit "$c" ;;
  esac
  (( SECONDS - t >= 10 )) && d=100
  n=$((n + 1)); echo "$n" > "$f.restarts"; : > "$f.waiting"
  sleep "$((d / 1000)).$(printf '%03d' $((d % 1000)))"; rm -f "$f.waiting"
  d=$((d * 2 > 60000 ? 60000 : d * 2))
done"""


def _start(host: _Host, run: _Run, plan: _Plan, append_log: bool = False) -> dict:
    host.containers.mkdir(parents=True, exist_ok=True)
    log_path = host.containers / f"{run.name}.log"
    exit_file = host.containers / f"{run.name}.exit"
    exit_file.unlink(missing_ok=True)
    with open(log_path, "a" if append_log else "w") as fh:
        fh.writelines(f"{line}\n" for line in plan.notes)
    state = {
        "id": uuid.uuid4().hex + uuid.uuid4().hex, "name": run.name, "image": run.image,
        "role": plan.role, "created_at": time.time(), "log": str(log_path), "exit_file": str(exit_file),
        "ray_head": plan.ray_head, "is_ray_head": plan.is_ray_head, "mark": container_mark(host.dir),
        "host": host.address, "port": plan.port, "pid": None, "pgid": None, "start_ticks": None,
        "exit_code": plan.exit_code, "argv": plan.argv, "restart_policy": run.restart,
    }
    if plan.role == "exited":
        return state
    # A bash wrapper leads the session so that the engine's own exit code is recorded.
    wrapper = ["bash", "-c", _SUPERVISOR, "container", str(exit_file), run.restart, *plan.argv]
    proc = process.start_group(wrapper, plan.env, log_path, cwd=host.home)
    state.update(pid=proc.pid, pgid=proc.pid, start_ticks=process.start_ticks(proc.pid))
    return state


# -- docker: the other subcommands -------------------------------------------------------------
def _docker(host: _Host, argv: list[str]) -> int:
    handlers = {"run": _docker_run, "rm": _docker_rm, "inspect": _docker_inspect,
                "logs": _docker_logs, "exec": _docker_exec, "ps": _docker_ps, "restart": _docker_restart}
    if not argv or argv[0] not in handlers:
        raise _Fail(1, f"{NOTE} docker {' '.join(argv[:1])} is not emulated "
                       f"(emulated: {', '.join(handlers)})")
    return handlers[argv[0]](host, argv[1:])


def _no_such_container(name: str) -> None:
    print(f"Error response from daemon: No such container: {name}", file=sys.stderr)


def _docker_rm(host: _Host, args: list[str]) -> int:
    force = any(a in ("-f", "--force") for a in args)
    code = 0
    for name in (a for a in args if not a.startswith("-")):
        state = host.load(name)
        if state is None:
            _no_such_container(name)
            code = 1
            continue
        if not force and container_status(state)[0] in ("running", "restarting"):
            print(f"Error response from daemon: cannot remove container \"/{name}\": container is "
                  "running: stop the container before removing or force remove", file=sys.stderr)
            code = 1
            continue
        stop_container(state)
        for suffix in (".json", ".log", ".exit", ".exit.restarts", ".exit.waiting"):
            (host.containers / f"{name}{suffix}").unlink(missing_ok=True)
        print(name)
    return code


def _docker_restart(host: _Host, args: list[str]) -> int:
    _grace, names = _take_option(args, ("-t", "--time", "--timeout", "-s", "--signal"))
    code = 0
    for name in names:
        state = host.load(name)
        if state is None or not state.get("run_args"):
            print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
            code = 1
            continue
        stop_container(state)
        run = _parse_run(state["run_args"])
        fresh = _start(host, run, _plan(host, run, _read_entrypoint(run)), append_log=True)
        fresh.update(id=state["id"], created_at=state["created_at"], run_args=state["run_args"])
        _write_json(host.state_path(name), fresh)
        print(name)
    return code


def _restart_count(state: dict) -> int:
    try:
        return int(Path(state["exit_file"] + ".restarts").read_text().strip())
    except (OSError, ValueError):
        return 0


def _inspect_doc(state: dict) -> dict:
    status, code = container_status(state)
    return {
        "Id": state["id"], "Name": f"/{state['name']}", "RestartCount": _restart_count(state),
        "Config": {"Image": state["image"]},
        "State": {"Status": status, "Running": status == "running", "ExitCode": code,
                  "Pid": state["pid"] if status == "running" else 0},
    }


def _render(fmt: str, doc: dict) -> str:
    """Docker's ``{{.A.B}}`` fields (only those; no functions or pipelines)."""
    def field_value(m: re.Match) -> str:
        value = doc
        for part in m[1].split("."):
            if not isinstance(value, dict) or part not in value:
                raise _Fail(1, f"template parsing error: can't evaluate field {part}")
            value = value[part]
        return str(value).lower() if isinstance(value, bool) else str(value)

    rest = _TEMPLATE_FIELD.sub("", fmt)
    if "{{" in rest:
        raise _Fail(1, f"{NOTE} only {{{{.Field}}}} templates are emulated: {fmt}")
    return _TEMPLATE_FIELD.sub(field_value, fmt.replace("\\t", "\t").replace("\\n", "\n"))


def _take_option(args: list[str], names: tuple[str, ...], default: str | None = None):
    """(the option's value, the other words) for ``--opt V``, ``-o V`` or ``--opt=V``."""
    value, rest = default, []
    words = iter(args)
    for word in words:
        name, eq, inline = word.partition("=")
        if word in names:
            value = next(words, "")
        elif eq and name.startswith("--") and name in names:
            value = inline
        else:
            rest.append(word)
    return value, rest


def _docker_inspect(host: _Host, args: list[str]) -> int:
    fmt, names = _take_option(args, ("-f", "--format"))
    docs, code = [], 0
    for name in names:
        state = host.load(name)
        if state is None:
            print(f"Error: No such object: {name}", file=sys.stderr)
            code = 1
        else:
            docs.append(_inspect_doc(state))
    if fmt is None:
        print(json.dumps(docs, indent=4))
    else:
        for doc in docs:
            print(_render(fmt, doc))
    return code


def _docker_logs(host: _Host, args: list[str]) -> int:
    tail, names = _take_option(args, ("--tail", "-n"), "all")
    if "-f" in names or "--follow" in names:
        raise _Fail(1, f"{NOTE} docker logs --follow is not emulated")
    state = host.load(names[0]) if len(names) == 1 else None
    if state is None:
        _no_such_container(" ".join(names))
        return 1
    lines = Path(state["log"]).read_text(errors="replace").splitlines() if Path(state["log"]).exists() else []
    if tail != "all":
        if not tail.isdigit():
            raise _Fail(1, f"invalid value for --tail: {tail!r}")
        lines = lines[-int(tail):] if int(tail) > 0 else []
    if lines:
        print("\n".join(lines))
    return 0


def _docker_exec(host: _Host, args: list[str]) -> int:
    words = [a for a in args if a not in ("-i", "-t", "-it", "-ti")]
    if not words:
        raise _Fail(1, '"docker exec" requires at least 2 arguments.')
    state = host.load(words[0])
    if state is None:
        _no_such_container(words[0])
        return 1
    if container_status(state)[0] != "running":
        raise _Fail(1, f"Error response from daemon: container {state['id']} is not running")
    if words[1:3] != ["ray", "status"]:
        raise _Fail(126, f"{NOTE} docker exec runs only `ray status` on an emulated host")
    if not state.get("is_ray_head"):
        raise _Fail(1, "ConnectionError: Could not find any running Ray instance. Please specify "
                       "the one to connect to by setting `--address` flag or `RAY_ADDRESS` environment variable.")
    print(_ray_status(host))
    return 0


def _ray_status(host: _Host) -> str:
    nodes = [host.dir] + [d for d in sorted(host.root.iterdir())
                          if d != host.dir and not d.name.startswith(".") and _has_worker_for(d, host.address)]
    infos = [_read_json(d / "host.json") or _gpu_info(None) for d in nodes]
    gpus = sum(i["gpu_count"] for i in infos)
    cpus = sum(i["vcpu"] for i in infos)
    lines = [f"======== Autoscaler status: {time.strftime('%Y-%m-%d %H:%M:%S')} ========",
             "Node status", "-" * 63, "Active:"]
    lines += [f" 1 node_{hashlib.sha256(d.name.encode()).hexdigest()[:56]}" for d in nodes]
    lines += ["Pending:", " (no pending nodes)", "Recent failures:", " (no failures)", "",
              "Resources", "-" * 63, "Usage:", f" 0.0/{float(cpus)} CPU", f" 0.0/{float(gpus)} GPU",
              "", "Demands:", " (no resource demands)"]
    return "\n".join(lines)


def _has_worker_for(sandbox: Path, head: str) -> bool:
    for path in (sandbox / "containers").glob("*.json"):
        state = _read_json(path)
        if (state and state.get("role") == "ray-worker" and state.get("ray_head") == head
                and container_status(state)[0] == "running"):
            return True
    return False


def _docker_ps(host: _Host, args: list[str]) -> int:
    fmt, rest = _take_option(args, ("-f", "--format"))
    show_all = any(a in ("-a", "--all") for a in rest)
    rows = []
    for path in sorted(host.containers.glob("*.json")):
        state = _read_json(path)
        if state is None:
            continue
        status, code = container_status(state)
        if status != "running" and not show_all:
            continue
        rows.append({"ID": state["id"][:12], "Names": state["name"], "Image": state["image"],
                     "State": status, "Status": "Up" if status == "running" else f"Exited ({code})"})
    if fmt is None:
        print("CONTAINER ID   IMAGE   STATUS   NAMES")
        rows_text = [f"{r['ID']}   {r['Image']}   {r['Status']}   {r['Names']}" for r in rows]
    else:
        rows_text = [_render(fmt, r) for r in rows]
    if rows_text:
        print("\n".join(rows_text))
    return 0


# == small file helpers =======================================================================
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_text(path: Path, text: str) -> None:
    """Atomically (another process may be reading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


