"""One place where ServeNest calls Alibaba Cloud: the real SDK clients, retries, errors.

Every call goes through :meth:`CloudSession.call`, which

- retries only what another attempt can fix (throttling, ServiceUnavailable,
  InternalError, any 5xx, a broken connection) with exponential backoff and full jitter,
  honouring the server's ``x-acs-retry-after``;
- never retries a 4xx validation or permission error;
- turns what it raises into :mod:`servenest.errors` types a person can act on.

The SDKs' own retry loop is left off (their ``RuntimeOptions.autoretry`` is ignored anyway,
see the aliyun-apis reference): one policy, here, that the tests can count.

``SERVENEST_CLOUD_EMULATOR=host:port`` points every client at the local emulator with a
dummy key (``servenest up --emulate`` and the tests set it); ``SERVENEST_CLOUD_TIME_SCALE``
shrinks every wait (backoff and polling) by that factor for rehearsals and fault runs.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from servenest.errors import (
    CloudCredentialsError,
    CloudError,
    CloudInputError,
    CloudPermissionError,
    CloudTransientError,
)

EMULATOR_ENV = "SERVENEST_CLOUD_EMULATOR"
TIME_SCALE_ENV = "SERVENEST_CLOUD_TIME_SCALE"
EMULATOR_ACCESS_KEY = "emulator-access-key"

# iact3's retryable set (aliyun/alibabacloud-ros-tool-iact3), plus every Throttling.* code.
RETRYABLE_CODES = {"Throttling", "ServiceUnavailable", "InternalError", "Throttling.User",
                   "Throttling.API", "Throttling.Resource", "RequestTimeout"}
_PERMISSION_CODES = ("Forbidden", "NoPermission", "NotAuthorized")
_QUERY = re.compile(r"\?[^\s'\")]*")
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken",
                     "InvalidCredentials", "IncompleteSignature")


@dataclass(frozen=True)
class Credentials:
    """What the SDK clients need; the secret parts never show in a repr or a log."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # host:port of the emulator; None: the product's public endpoint

    @property
    def masked_key_id(self) -> str:
        k = self.access_key_id
        return k[:4] + "…" + k[-3:] if len(k) > 10 else "…"


@dataclass(frozen=True)
class CloudTimings:
    """Waits, in seconds, before ``scale``. Defaults suit real stacks and hosts."""

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 20.0
    max_attempts: int = 10  # at a 30% throttling rate, ten straight refusals is ~6 in a million
    stack_poll_s: tuple[float, float, float] = (10.0, 1.5, 60.0)  # first, factor, cap
    command_poll_s: tuple[float, float, float] = (1.0, 2.0, 30.0)
    stack_timeout_s: float = 3600.0
    delete_timeout_s: float = 1800.0
    status_cache_s: float = 30.0  # engine liveness through Cloud Assistant costs API calls
    scale: float = 1.0

    @classmethod
    def from_env(cls) -> CloudTimings:
        raw = os.environ.get(TIME_SCALE_ENV)
        if not raw:
            return cls()
        try:
            scale = float(raw)
        except ValueError:
            raise CloudInputError(f"{TIME_SCALE_ENV}={raw!r} is not a number") from None
        if not 0 < scale <= 1:
            raise CloudInputError(f"{TIME_SCALE_ENV} must be in (0, 1], got {scale}")
        return cls(scale=scale)

    def poll_delays(self, schedule: tuple[float, float, float]):
        """First, first·factor, … up to the cap, forever (scaled)."""
        delay, factor, cap = schedule
        while True:
            yield delay * self.scale
            delay = min(cap, delay * factor)


def emulator_credentials() -> Credentials | None:
    endpoint = os.environ.get(EMULATOR_ENV)
    if not endpoint:
        return None
    return Credentials(EMULATOR_ACCESS_KEY, "emulator-secret", None, endpoint)


def _config(creds: Credentials, region: str, product: str):
    from alibabacloud_tea_openapi.models import Config

    cfg = Config(
        access_key_id=creds.access_key_id, access_key_secret=creds.access_key_secret,
        security_token=creds.security_token, region_id=region,
        connect_timeout=5000, read_timeout=30000,
        endpoint=creds.endpoint or _public_endpoint(product, region),
    )
    if creds.endpoint:
        cfg.protocol = "http"  # the emulator speaks plain HTTP; every API defaults to HTTPS
    return cfg


def _client_class(product: str):
    if product == "ros":
        from alibabacloud_ros20190910.client import Client
    elif product == "ecs":
        from alibabacloud_ecs20140526.client import Client
    elif product == "cs":
        from alibabacloud_cs20151215.client import Client
    else:
        raise ValueError(f"unknown product {product!r}")
    return Client


def _public_endpoint(product: str, region: str) -> str:
    # ROS and CS have one regional endpoint each; ECS too for the APIs used here.
    return {"ros": "ros.aliyuncs.com", "ecs": f"ecs.{region}.aliyuncs.com",
            "cs": f"cs.{region}.aliyuncs.com"}[product]


class CloudSession:
    """SDK clients for one region and credentials, with ServeNest's retry policy."""

    def __init__(
        self, creds: Credentials, region: str, timings: CloudTimings | None = None,
        sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
    ):
        self.creds = creds
        self.region = region
        self.timings = timings or CloudTimings.from_env()
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.calls = 0  # attempts, retries included
        self.retries = 0
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, product: str):
        with self._lock:
            if product not in self._clients:
                self._clients[product] = _client_class(product)(_config(self.creds, self.region, product))
            return self._clients[product]

    def call(self, product: str, method: str, *args: Any) -> dict[str, Any]:
        """``client.<method>(*args)`` with retries; the response body as a wire-format dict."""
        from Tea.exceptions import TeaException

        fn = getattr(self.client(product), method)
        action = _action_name(method)
        t = self.timings
        for attempt in range(1, t.max_attempts + 1):
            self.calls += 1
            try:
                response = fn(*args)
            except TeaException as exc:
                if not is_retryable(exc) or attempt == t.max_attempts:
                    raise translate(exc, product, action, self.creds, attempts=attempt) from None
                self.retries += 1
                self.sleep(self._backoff(attempt, exc))
                continue
            body = getattr(response, "body", None)
            return body.to_map() if body is not None and hasattr(body, "to_map") else (body or {})
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, exc: Exception) -> float:
        t = self.timings
        # Full jitter: many provisions retrying together do not come back in step.
        delay = self.rng.uniform(0, min(t.backoff_cap_s, t.backoff_base_s * 2 ** (attempt - 1)))
        retry_after_ms = getattr(exc, "retry_after", None) or 0
        if retry_after_ms and retry_after_ms > 0:
            delay = max(delay, retry_after_ms / 1000)
        return delay * t.scale


def _action_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "code", "") or "")


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(exc, "statusCode", None)
    data = getattr(exc, "data", None)
    if status is None and isinstance(data, dict):
        status = data.get("statusCode")
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def is_retryable(exc: Exception) -> bool:
    code = error_code(exc)
    if code in RETRYABLE_CODES or code.startswith("Throttling"):
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status == 429
    # No HTTP status: the request never got an answer (refused, reset, timed out).
    return type(exc).__name__ == "UnretryableException" or code in ("", "UnretryableError")


def _message(exc: Exception) -> str:
    data = getattr(exc, "data", None)
    if isinstance(data, dict) and data.get("Message"):
        return str(data["Message"])
    return str(getattr(exc, "message", "") or exc)


def translate(exc: Exception, product: str, action: str, creds: Credentials, attempts: int = 1) -> CloudError:
    """The SDK's exception as a ServeNest error that says what to do."""
    code, status = error_code(exc), _status(exc)
    request_id = str(getattr(exc, "request_id", "") or "")
    msg = _message(exc)
    if creds.access_key_id:  # the API echoes the key id; logs and artifacts get it masked
        msg = msg.replace(creds.access_key_id, creds.masked_key_id)
    # Transport errors quote the request URL, whose query carries the parameters (a Cloud
    # Assistant script among them, which may write the API key): keep only the path.
    msg = _QUERY.sub("?<parameters removed>", msg)
    where = f"{product.upper()} {action}"
    kw = {"code": code, "status": status, "request_id": request_id}
    if is_retryable(exc):
        reason = f"{code or 'connection error'}: {msg}"
        return CloudTransientError(f"{where} still failing after {attempts} attempts ({reason})", **kw)
    if status == 403 or code.startswith(_PERMISSION_CODES):
        return CloudPermissionError(
            f"{where} was refused for access key {creds.masked_key_id}: {code}: {msg} "
            f"Grant the RAM user the {product.upper()} permissions ServeNest needs "
            f"(see README, 'Cloud credentials').", **kw)
    if code.startswith(_CREDENTIAL_CODES):
        return CloudCredentialsError(
            f"{where}: the cloud does not accept access key {creds.masked_key_id} ({code}: {msg}); "
            f"check the AlibabaCloudCredentials block.", **kw)
    if code.startswith("InvalidRegionId"):
        return CloudInputError(f"{where}: {msg} Check cloud.region.", **kw)
    return CloudError(f"{where} failed: {code}: {msg} (request id {request_id or 'n/a'})", **kw)
