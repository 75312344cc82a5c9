"""Running shell commands for a pipeline step.

Topologies take a ``CommandRunner`` so that the same code streams its output into a
Prefect run's logs (``tasks.shell.prefect_shell_runner``, through prefect-shell) or
runs plainly under tests and the CLI (``subprocess_runner``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

from servenest.errors import ServeNestError

CommandRunner = Callable[[Sequence[str], Mapping[str, str] | None], list[str]]


class CommandFailedError(ServeNestError):
    def __init__(self, message: str, output_tail: list[str]):
        super().__init__(message + ("\n" + "\n".join(output_tail) if output_tail else ""))
        self.output_tail = output_tail


def script(commands: Sequence[str]) -> str:
    # prefect-shell runs a script with plain bash, where only the last command's status
    # counts; every ServeNest script stops at the first failure instead.
    return "\n".join(["set -euo pipefail", *commands])


def subprocess_runner(commands: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        ["bash", "-c", script(commands)], env=full_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, check=False,
    )
    lines = proc.stdout.splitlines()
    if proc.returncode != 0:
        raise CommandFailedError(f"command failed with exit code {proc.returncode}:", lines[-30:])
    return lines
