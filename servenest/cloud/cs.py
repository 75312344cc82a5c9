"""ACK/ACS clusters through the CS (Container Service) API: detail, kubeconfig, delete.

A cluster is usable only in state ``running``; states that will become running (initial,
scaling, upgrading...) are waited out, the others are errors that say what state it is in.
The kubeconfig is the temporary kind (``TemporaryDurationMinutes``): ServeNest never keeps
a long-lived cluster credential, and an expired one is fetched again, not reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from servenest.cloud.api import CloudSession
from servenest.errors import CloudError, CloudInputError, CloudTransientError

RUNNING = "running"
# States a cluster passes through on its way to running (CS API ``state`` values).
SETTLING = {"initial", "updating", "upgrading", "scaling", "waiting"}
# Weights staging can take hours; the client is also rebuilt when less than 5 minutes
# remain. CS allows 15 to 4320.
KUBECONFIG_MINUTES = 360


@dataclass(frozen=True)
class Kubeconfig:
    text: str  # the kubeconfig YAML; it holds a credential, so it is never logged
    expires: datetime | None

    def expired(self, margin_s: float = 60.0) -> bool:
        return self.expires is not None and (self.expires - datetime.now(UTC)).total_seconds() < margin_s

    def __repr__(self) -> str:  # never print the credential
        return f"Kubeconfig(expires={self.expires})"


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Clusters:
    """ACK/ACS clusters of one region."""

    def __init__(self, session: CloudSession, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.s = session
        self.clock = clock
        self.sleep = sleep

    def get(self, cluster_id: str) -> dict | None:
        """The cluster's detail (snake_case keys), or None when CS does not know it."""
        try:
            return self.s.call("cs", "describe_cluster_detail", cluster_id)
        except CloudError as exc:
            if exc.code == "ErrorClusterNotFound" or exc.status == 404:
                return None
            raise

    def require(self, cluster_id: str) -> dict:
        detail = self.get(cluster_id)
        if detail is None:
            raise CloudInputError(
                f"ACK/ACS cluster {cluster_id} does not exist in region {self.s.region} (or this "
                f"access key cannot see it); check cloud.cluster_id and cloud.region")
        if detail.get("region_id") and detail["region_id"] != self.s.region:
            raise CloudInputError(
                f"cluster {cluster_id} is in region {detail['region_id']}, not cloud.region "
                f"{self.s.region}")
        return detail

    def wait_running(self, cluster_id: str, timeout_s: float) -> dict:
        """The detail once ``running``; waits out settling states, refuses the rest."""
        delays = self.s.timings.poll_delays(self.s.timings.stack_poll_s)
        deadline = self.clock() + timeout_s
        while True:
            detail = self.require(cluster_id)
            state = detail.get("state", "")
            if state == RUNNING:
                return detail
            if state not in SETTLING:
                raise CloudInputError(
                    f"cluster {cluster_id} ({detail.get('name')}) is {state!r}, not running; "
                    f"ServeNest deploys only onto a running cluster")
            if self.clock() >= deadline:
                raise CloudTransientError(
                    f"cluster {cluster_id} still {state!r} after {timeout_s:.0f} s")
            self.sleep(next(delays))

    def kubeconfig(self, cluster_id: str, private: bool = False,
                   minutes: int = KUBECONFIG_MINUTES) -> Kubeconfig:
        from alibabacloud_cs20151215 import models as m

        body = self.s.call("cs", "describe_cluster_user_kubeconfig", cluster_id,
                           m.DescribeClusterUserKubeconfigRequest(
                               private_ip_address=private, temporary_duration_minutes=minutes))
        config = Kubeconfig(body.get("config") or "", _parse_time(body.get("expiration")))
        if not config.text:
            raise CloudError(f"CS returned no kubeconfig for cluster {cluster_id}")
        if config.expired():
            raise CloudInputError(
                f"the kubeconfig CS issued for cluster {cluster_id} expires at {config.expires}; "
                f"it is already expired (check this machine's clock)")
        return config

    def delete(self, cluster_id: str) -> bool:
        """Ask CS to delete the cluster; False when it is already gone."""
        from alibabacloud_cs20151215 import models as m

        try:
            self.s.call("cs", "delete_cluster", cluster_id, m.DeleteClusterRequest())
        except CloudError as exc:
            if exc.code == "ErrorClusterNotFound" or exc.status == 404:
                return False
            raise
        return True

    def wait_deleted(self, cluster_id: str, timeout_s: float) -> None:
        delays = self.s.timings.poll_delays(self.s.timings.stack_poll_s)
        deadline = self.clock() + timeout_s
        while (detail := self.get(cluster_id)) is not None:
            if detail.get("state") == "delete_failed":
                raise CloudError(f"CS could not delete cluster {cluster_id} (state delete_failed)")
            if self.clock() >= deadline:
                raise CloudTransientError(f"cluster {cluster_id} still exists after {timeout_s:.0f} s")
            self.sleep(next(delays))
