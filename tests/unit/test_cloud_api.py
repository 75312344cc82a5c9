"""The cloud session: which errors are retried, how often, and what the user is told."""

from __future__ import annotations

import random

import pytest
from alibabacloud_ros20190910 import models as ros_models

from servenest.cloud.api import CloudSession, CloudTimings, Credentials, is_retryable
from servenest.errors import (
    CloudCredentialsError,
    CloudError,
    CloudInputError,
    CloudPermissionError,
    CloudTransientError,
    Retryable,
)


def session(emu, **timings) -> tuple[CloudSession, list[float]]:
    slept: list[float] = []
    creds = Credentials("LTAI5tAbCdEfGhIjK", "secret-value", None, emu.endpoint)
    s = CloudSession(creds, "cn-hangzhou", CloudTimings(**timings), sleep=slept.append, rng=random.Random(1))
    return s, slept


def list_stacks(s: CloudSession) -> dict:
    return s.call("ros", "list_stacks", ros_models.ListStacksRequest(region_id=s.region))


def test_throttling_and_5xx_are_retried_until_they_pass(cloud):
    cloud.faults.update({"throttle_rate": 0.5, "error_rate": 0.5, "retry_after_ms": 5})
    s, slept = session(cloud, max_attempts=30)
    for _ in range(10):
        assert list_stacks(s)["TotalCount"] == 0
    refused = [c for c in cloud.calls if c.status != 200]
    assert refused and s.retries == len(refused) and s.calls == len(cloud.calls)
    assert {c.code for c in refused} <= {"Throttling.User", "ServiceUnavailable", "InternalError"}
    # Throttling answers carry x-acs-retry-after (5 ms): never wait less than the server asked.
    assert len(slept) == s.retries and all(d >= 0.005 for d in slept)


def test_backoff_grows_exponentially_with_full_jitter(cloud):
    cloud.faults.update({"error_rate": 1.0})
    s, slept = session(cloud, max_attempts=6, backoff_base_s=1.0, backoff_cap_s=8.0)
    with pytest.raises(CloudTransientError, match="after 6 attempts") as err:
        list_stacks(s)
    assert isinstance(err.value, Retryable)  # the Prefect task may try again, later
    assert len(slept) == 5
    for attempt, delay in enumerate(slept, start=1):
        assert 0 <= delay <= min(8.0, 2 ** (attempt - 1))
    assert len(set(slept)) == 5  # jittered, not in lockstep


def test_a_validation_error_is_never_retried(cloud):
    s, slept = session(cloud)
    with pytest.raises(CloudError, match="StackValidationFailed") as err:
        s.call("ros", "validate_template",
               ros_models.ValidateTemplateRequest(region_id="cn-hangzhou", template_body="Resources: {}"))
    assert not isinstance(err.value, Retryable)
    assert err.value.code == "StackValidationFailed" and err.value.status == 400 and err.value.request_id
    assert s.calls == 1 and slept == []


def test_a_key_without_permission_is_told_so_with_the_key_masked(cloud):
    cloud.faults.update({"denied_access_keys": ["LTAI5tAbCdEfGhIjK"]})
    s, _ = session(cloud)
    with pytest.raises(CloudPermissionError, match="RAM") as err:
        list_stacks(s)
    assert "LTAI…hIjK"[:4] in str(err.value) and "LTAI5tAbCdEfGhIjK" not in str(err.value)
    assert "secret-value" not in str(err.value) and "secret-value" not in repr(s.creds)
    assert s.calls == 1


def test_an_unknown_region_is_an_input_error(cloud):
    creds = Credentials("AK", "SK", None, cloud.endpoint)
    s = CloudSession(creds, "cn-atlantis", CloudTimings(), sleep=lambda _: None)
    with pytest.raises(CloudInputError, match="cn-atlantis"):
        list_stacks(s)


def test_a_refused_connection_is_transient():
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    creds = Credentials("AK", "SK", None, f"127.0.0.1:{port}")
    s = CloudSession(creds, "cn-hangzhou", CloudTimings(max_attempts=2), sleep=lambda _: None)
    with pytest.raises(CloudTransientError):
        list_stacks(s)
    assert s.calls == 2


def test_an_empty_access_key_is_a_credentials_error(cloud):
    s = CloudSession(Credentials("", "", None, cloud.endpoint), "cn-hangzhou", sleep=lambda _: None)
    with pytest.raises((CloudCredentialsError, CloudError)) as err:
        list_stacks(s)
    assert not isinstance(err.value, Retryable)


def test_is_retryable_reads_codes_and_statuses():
    class E(Exception):
        def __init__(self, code, status):
            self.code, self.status_code = code, status

    assert is_retryable(E("Throttling.API", 400))
    assert is_retryable(E("SomethingNew", 502))
    assert not is_retryable(E("InvalidParameter", 400))
    assert not is_retryable(E("Forbidden.RAM", 403))


def test_time_scale_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SERVENEST_CLOUD_TIME_SCALE", "0.01")
    t = CloudTimings.from_env()
    delays = t.poll_delays((10, 1.5, 60))
    assert [round(next(delays), 4) for _ in range(6)] == [0.1, 0.15, 0.225, 0.3375, 0.5062, 0.6]
    monkeypatch.setenv("SERVENEST_CLOUD_TIME_SCALE", "fast")
    with pytest.raises(CloudInputError):
        CloudTimings.from_env()


def test_a_transport_error_never_quotes_the_request_parameters():
    import base64
    import socket

    from alibabacloud_ecs20140526 import models as ecs_models

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = CloudSession(Credentials("AK", "SK", None, f"127.0.0.1:{port}"), "cn-hangzhou",
                     CloudTimings(max_attempts=1), sleep=lambda _: None)
    content = base64.b64encode(b"printf '%s' sk-very-secret > /root/.servenest/api-key").decode()
    with pytest.raises(CloudTransientError) as err:
        s.call("ecs", "run_command", ecs_models.RunCommandRequest(
            region_id="cn-hangzhou", command_content=content, content_encoding="Base64",
            instance_id=["i-1"], type="RunShellScript"))
    assert content[:20] not in str(err.value) and "CommandContent" not in str(err.value)
