"""Commands that stream their output into the run's logs, through prefect-shell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect_shell import ShellOperation

from servenest.commands import CommandFailedError, script


def prefect_shell_runner(commands: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    op = ShellOperation(commands=[script(commands)], env=dict(env or {}), stream_output=True)
    try:
        return op.run()
    except RuntimeError as exc:
        # prefect-shell's message has only the exit code; the output is in the logs above.
        raise CommandFailedError(f"{exc} (its output is in the run logs above)", []) from None
