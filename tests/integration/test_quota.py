"""tasks/quota.py: GPU quota as Prefect global concurrency limits, on the session's real
Prefect server. Twenty redeploys asking for GPUs at once never hold more than the limit."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.quota import QuotaBusyError, hold_gpus, read_gpu_limits


@pytest.fixture
def gpu_limit(prefect_server):
    created = []

    def make(kind: str, limit: int) -> None:
        name = f"gpus-{kind.lower()}"
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        created.append(name)

    yield make
    with get_client(sync_client=True) as client:
        for name in created:
            client.delete_global_concurrency_limit_by_name(name)


def test_twenty_redeploys_never_hold_more_gpus_than_the_limit(gpu_limit):
    gpu_limit("TESTA", 16)  # room for two 8-GPU copies at a time
    lock = threading.Lock()
    held = {"now": 0, "peak": 0}

    @task
    def second_copy(i: int) -> int:
        with hold_gpus({"TESTA": 8}, {"TESTA": 16}, wait_s=120):
            with lock:
                held["now"] += 8
                held["peak"] = max(held["peak"], held["now"])
            time.sleep(0.3)
            with lock:
                held["now"] -= 8
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=20))
    def nightly() -> list[int]:
        return [f.result() for f in second_copy.map(range(20))]

    assert sorted(nightly()) == list(range(20))
    assert held["peak"] <= 16
    assert held["peak"] == 16, "the limit should let two copies through at once"


def test_a_busy_quota_gives_up_after_the_wait(gpu_limit):
    gpu_limit("TESTB", 8)
    inside, release = threading.Event(), threading.Event()

    @task
    def holder() -> None:
        with hold_gpus({"TESTB": 8}, {"TESTB": 8}, wait_s=30):
            inside.set()
            release.wait(60)

    @task
    def latecomer() -> str:
        inside.wait(30)
        try:
            with hold_gpus({"TESTB": 4}, {"TESTB": 8}, wait_s=1):
                return "got in"
        except QuotaBusyError as exc:
            return str(exc)
        finally:
            release.set()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def contend() -> str:
        h = holder.submit()
        message = latecomer.submit().result()
        h.result()
        return message

    assert "4 TESTB GPUs did not free up in gpus-testb within 1 s" in contend()


def test_limits_are_read_by_kind_and_a_missing_one_is_none(gpu_limit):
    gpu_limit("TESTC", 24)

    @flow
    def read() -> dict:
        return read_gpu_limits({"TESTC": 8, "NOSUCH": 8})

    assert read() == {"TESTC": 24, "NOSUCH": None}
