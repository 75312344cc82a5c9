"""When a task may retry: only on failures another attempt can fix."""

from __future__ import annotations

import httpx

from servenest.errors import Retryable, ServeNestError


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, Retryable):
        return True
    if isinstance(exc, ServeNestError):
        return False  # deterministic: a retry would fail the same way, later
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def transient_only(task, task_run, state) -> bool:
    """``retry_condition_fn`` for Prefect tasks."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return False
