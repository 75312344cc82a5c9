"""ECS Cloud Assistant: run a shell script on instances and wait for every result.

Scripts travel Base64-encoded with ``KeepCommand=false``, so no reusable command (which
the console lists, content included) is left behind, and each call carries a ClientToken
so a retried RunCommand whose first answer was lost does not run the script twice.
Nothing here logs a script's content: one of them writes the API key.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from servenest.cloud.api import CloudSession
from servenest.errors import CloudInputError, CloudTransientError, HostCommandError

# Cloud Assistant's limit on Base64 CommandContent.
MAX_CONTENT_BYTES = 24 * 1024
FINISHED = {"Success", "Failed", "Error", "Timeout", "Cancelled", "Terminated", "Invalid", "Aborted"}
OUTPUT_TAIL_LINES = 30


@dataclass(frozen=True)
class CommandResult:
    instance_id: str
    status: str
    exit_code: int | None
    output: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "Success"

    def tail(self, lines: int = OUTPUT_TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip("\n").splitlines()[-lines:])


def encode_script(script: str) -> str:
    content = base64.b64encode(script.encode()).decode()
    if len(content) > MAX_CONTENT_BYTES:
        raise CloudInputError(
            f"script is {len(content)} bytes in Base64, over Cloud Assistant's {MAX_CONTENT_BYTES}"
        )
    return content


class Assistant:
    """Cloud Assistant of one region."""

    def __init__(self, session: CloudSession, clock: Callable[[], float] = time.monotonic):
        self.s = session
        self.clock = clock

    def start(self, instance_ids: list[str], script: str, *, name: str, timeout_s: int) -> str:
        from alibabacloud_ecs20140526 import models as m

        req = m.RunCommandRequest(
            region_id=self.s.region, type="RunShellScript", command_content=encode_script(script),
            content_encoding="Base64", instance_id=list(instance_ids), timeout=int(timeout_s),
            name=name, keep_command=False, client_token=uuid.uuid4().hex,
        )
        return self.s.call("ecs", "run_command", req)["InvokeId"]

    def results(self, invoke_id: str) -> list[CommandResult]:
        from alibabacloud_ecs20140526 import models as m

        body = self.s.call("ecs", "describe_invocation_results", m.DescribeInvocationResultsRequest(
            region_id=self.s.region, invoke_id=invoke_id, content_encoding="PlainText"))
        rows = ((body.get("Invocation") or {}).get("InvocationResults") or {}).get("InvocationResult") or []
        return [
            CommandResult(
                r.get("InstanceId", ""), r.get("InvocationStatus", ""), r.get("ExitCode"),
                r.get("Output") or "", " ".join(x for x in (r.get("ErrorCode"), r.get("ErrorInfo")) if x),
            )
            for r in rows
        ]

    def run(
        self, instance_ids: list[str], script: str, *, name: str, timeout_s: int = 600,
        on_poll: Callable[[float, list[CommandResult]], None] | None = None, check: bool = True,
        poll_s: tuple[float, float, float] | None = None,
    ) -> list[CommandResult]:
        """Run and wait; with ``check`` a failure on any instance raises HostCommandError."""
        invoke_id = self.start(instance_ids, script, name=name, timeout_s=timeout_s)
        t = self.s.timings
        started = self.clock()
        # The agent enforces ``timeout_s``; this deadline only covers a lost agent. Not
        # scaled: scripts take real time even when the waits between polls are shortened.
        deadline = started + timeout_s + 120
        for delay in t.poll_delays(poll_s or t.command_poll_s):
            self.s.sleep(delay)
            results = self.results(invoke_id)
            if on_poll is not None:
                on_poll(self.clock() - started, results)
            if results and len(results) >= len(instance_ids) and all(r.status in FINISHED for r in results):
                break
            if self.clock() >= deadline:
                raise CloudTransientError(
                    f"Cloud Assistant command {name} ({invoke_id}) has not finished after "
                    f"{timeout_s + 120} s; is the agent running on {', '.join(instance_ids)}?",
                    code="InvocationLost")
        if check:
            failed = [r for r in results if not r.ok]
            if failed:
                raise HostCommandError(
                    "\n".join(
                        f"{name} failed on {r.instance_id}: {r.status}"
                        f"{f' (exit {r.exit_code})' if r.exit_code is not None else ''}"
                        f"{f' {r.error}' if r.error else ''}\n{r.tail()}"
                        for r in failed
                    ),
                    code=failed[0].status,
                )
        return results
