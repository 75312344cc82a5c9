"""Where ServeNest keeps engines, weights, logs and state on this machine.

Everything lives under SERVENEST_HOME (default ~/.servenest) so that a fresh clone of
the repository reuses an engine environment and staged weights made earlier.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("SERVENEST_HOME", Path.home() / ".servenest")).expanduser()


def engines_dir() -> Path:
    # Separately overridable so that tests with a throw-away home reuse the engine
    # environment (a one-minute install) and the staged weights.
    return Path(os.environ.get("SERVENEST_ENGINES_DIR", home() / "engines")).expanduser()


def models_dir() -> Path:
    return Path(os.environ.get("SERVENEST_MODELS_DIR", home() / "models")).expanduser()


def logs_dir(deployment: str) -> Path:
    return home() / "logs" / deployment


def state_dir() -> Path:
    return home() / "state"


def safe_component(text: str) -> str:
    """A path component from a model id or revision ("Qwen/Qwen3-8B" -> "Qwen--Qwen3-8B")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-") or "_"


def servenest_executable() -> str:
    """The ``servenest`` command's absolute path: printed commands must work in a fresh shell too."""
    beside = Path(sys.executable).parent / "servenest"
    return str(beside) if beside.exists() else shutil.which("servenest") or "servenest"
