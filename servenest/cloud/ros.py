"""ROS stack operations on the real SDK client: validate, price, create, wait, explain, delete.

Create waits for ``CREATE_COMPLETE`` and fails on ``CREATE_FAILED``,
``CREATE_ROLLBACK_COMPLETE`` or ``CREATE_ROLLBACK_FAILED``; delete waits for
``DELETE_COMPLETE`` and treats ``StackNotFound`` as deleted (the sets
terraform-provider-alicloud uses). Polling backs off from ``CloudTimings.stack_poll_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from servenest.cloud.api import CloudSession
from servenest.errors import CloudError, CloudTransientError, StackFailedError

CREATE_FAILED = {"CREATE_FAILED", "CREATE_ROLLBACK_COMPLETE", "CREATE_ROLLBACK_FAILED",
                 "ROLLBACK_COMPLETE", "ROLLBACK_FAILED"}
IN_PROGRESS_SUFFIX = "_IN_PROGRESS"
# Codes (in a failed resource's reason) that mean "no capacity here", so another zone or
# instance type may work; anything else is a real failure to report, not to route around.
CAPACITY_MARKERS = ("NoStock", "OutOfStock", "SoldOut", "ResourceNotAvailable",
                    "QuotaExceed", "InsufficientBalance.Quota", "Zone.NotOnSale",
                    "InvalidInstanceType.NotSupported", "InvalidResourceType.NotSupported")
MANAGED_TAG = "servenest:managed"
DEPLOYMENT_TAG = "servenest:deployment"


@dataclass(frozen=True)
class StackResult:
    stack_id: str
    status: str
    reason: str
    outputs: dict[str, Any]
    failed_resources: list[dict[str, str]]

    @property
    def capacity_failure(self) -> bool:
        text = " ".join([self.reason, *(r.get("StatusReason", "") for r in self.failed_resources)])
        return any(m in text for m in CAPACITY_MARKERS)

    def explain(self) -> str:
        lines = [f"stack {self.stack_id} ended {self.status}: {self.reason}"]
        lines += [
            f"  - {r.get('LogicalResourceId')} ({r.get('ResourceType')}): {r.get('StatusReason')}"
            for r in self.failed_resources
        ]
        return "\n".join(lines)


def _tags(tags: dict[str, str]) -> list:
    from alibabacloud_ros20190910 import models as m

    return [m.CreateStackRequestTags(key=k, value=v) for k, v in tags.items()]


class Stacks:
    """ROS stacks of one region."""

    def __init__(self, session: CloudSession, clock: Callable[[], float] = time.monotonic):
        self.s = session
        self.clock = clock

    @property
    def region(self) -> str:
        return self.s.region

    # -- before any spend ---------------------------------------------------------------
    def validate(self, template_body: str) -> dict:
        from alibabacloud_ros20190910 import models as m

        return self.s.call("ros", "validate_template",
                           m.ValidateTemplateRequest(region_id=self.region, template_body=template_body))

    def estimate_cost(self, template_body: str, parameters: dict[str, str]) -> dict:
        """Per resource: ``{logical id: {"Type", "Result": {"Order": {...}}}}``."""
        from alibabacloud_ros20190910 import models as m

        req = m.GetTemplateEstimateCostRequest(
            region_id=self.region, template_body=template_body,
            parameters=[m.GetTemplateEstimateCostRequestParameters(parameter_key=k, parameter_value=v)
                        for k, v in parameters.items()] or None,
        )
        return self.s.call("ros", "get_template_estimate_cost", req).get("Resources") or {}

    # -- finding ------------------------------------------------------------------------
    def priced_lines(self, template_body: str, parameters: dict[str, str]) -> tuple[list[tuple[str, str, float]], str]:
        """(resource, type, hourly amount) per priced resource, and the currency."""
        lines, currency = [], "CNY"
        for lid, res in self.estimate_cost(template_body, parameters).items():
            order = ((res or {}).get("Result") or {}).get("Order") or {}
            if order:
                currency = order.get("Currency", currency)
                lines.append((lid, res.get("Type", ""), float(order.get("TradeAmount") or 0)))
        return lines, currency

    def find_by_name(self, name: str) -> dict | None:
        from alibabacloud_ros20190910 import models as m

        body = self.s.call("ros", "list_stacks",
                           m.ListStacksRequest(region_id=self.region, stack_name=[name], page_size=50))
        live = [st for st in body.get("Stacks") or []
                if st.get("StackName") == name and st.get("Status") != "DELETE_COMPLETE"]
        return live[0] if live else None

    def list_tagged(self, tags: dict[str, str]) -> list[dict]:
        from alibabacloud_ros20190910 import models as m

        out, page = [], 1
        while True:
            req = m.ListStacksRequest(
                region_id=self.region, page_number=page, page_size=50,
                tag=[m.ListStacksRequestTag(key=k, value=v) for k, v in tags.items()],
            )
            body = self.s.call("ros", "list_stacks", req)
            stacks = body.get("Stacks") or []
            out += [st for st in stacks if st.get("Status") != "DELETE_COMPLETE"]
            if not stacks or page * 50 >= int(body.get("TotalCount") or 0):
                return out
            page += 1

    def get(self, stack_id: str) -> dict | None:
        """The stack, or None when ROS no longer knows it."""
        from alibabacloud_ros20190910 import models as m

        try:
            return self.s.call("ros", "get_stack", m.GetStackRequest(region_id=self.region, stack_id=stack_id))
        except CloudError as exc:
            if exc.code == "StackNotFound":
                return None
            raise

    # -- create -------------------------------------------------------------------------
    def create(
        self, name: str, template_body: str, parameters: dict[str, str], tags: dict[str, str],
        client_token: str, timeout_minutes: int = 60,
    ) -> str:
        """CreateStack; the same ``client_token`` returns the same stack, so a retry after a
        lost response cannot make a second one."""
        from alibabacloud_ros20190910 import models as m

        req = m.CreateStackRequest(
            region_id=self.region, stack_name=name, template_body=template_body,
            parameters=[m.CreateStackRequestParameters(parameter_key=k, parameter_value=v)
                        for k, v in parameters.items()] or None,
            tags=_tags(tags), client_token=client_token, timeout_in_minutes=timeout_minutes,
            disable_rollback=False,
        )
        return self.s.call("ros", "create_stack", req)["StackId"]

    def wait_created(self, stack_id: str, on_poll: Callable[[dict], None] | None = None) -> StackResult:
        body = self.wait_settled(stack_id, on_poll)
        if body is None:
            raise StackFailedError(f"stack {stack_id} disappeared while being created", code="StackNotFound")
        status = body.get("Status", "")
        outputs = {o["OutputKey"]: o.get("OutputValue") for o in body.get("Outputs") or []}
        failed = [] if status == "CREATE_COMPLETE" else self.failed_resources(stack_id)
        return StackResult(stack_id, status, body.get("StatusReason", ""), outputs, failed)

    def wait_settled(self, stack_id: str, on_poll: Callable[[dict], None] | None = None) -> dict | None:
        """Wait out whatever the stack is doing; None when it is gone."""
        return self._wait(stack_id, lambda st: not st.endswith(IN_PROGRESS_SUFFIX),
                          self.s.timings.stack_timeout_s, on_poll)

    def failed_resources(self, stack_id: str) -> list[dict[str, str]]:
        """The resources whose creation failed, with ROS's reasons (from the stack events)."""
        from alibabacloud_ros20190910 import models as m

        req = m.ListStackEventsRequest(region_id=self.region, stack_id=stack_id,
                                       status=["CREATE_FAILED"], page_size=50)
        try:
            events = self.s.call("ros", "list_stack_events", req).get("Events") or []
        except CloudError:
            return []  # the explanation is best-effort; the stack status already says it failed
        keep = ("LogicalResourceId", "ResourceType", "Status", "StatusReason")
        return [{k: str(e.get(k, "")) for k in keep} for e in events
                if e.get("ResourceType") != "ALIYUN::ROS::Stack"]

    # -- delete -------------------------------------------------------------------------
    def delete(self, stack_id: str) -> bool:
        """DeleteStack and wait until it is gone; False when it was already gone."""
        from alibabacloud_ros20190910 import models as m

        try:
            self.s.call("ros", "delete_stack", m.DeleteStackRequest(region_id=self.region, stack_id=stack_id))
        except CloudError as exc:
            if exc.code == "StackNotFound":
                return False
            raise
        body = self._wait(stack_id, lambda st: st in ("DELETE_COMPLETE", "DELETE_FAILED"),
                          self.s.timings.delete_timeout_s)
        if body is not None and body.get("Status") != "DELETE_COMPLETE":
            raise StackFailedError(
                f"deleting stack {stack_id} ended {body.get('Status')}: {body.get('StatusReason')}; "
                f"resources may remain: check the ROS console and run teardown again",
                code=str(body.get("Status")))
        return True

    # -- polling --------------------------------------------------------------------------
    def _wait(self, stack_id: str, done: Callable[[str], bool], timeout_s: float,
              on_poll: Callable[[dict], None] | None = None) -> dict | None:
        t = self.s.timings
        deadline = self.clock() + timeout_s * t.scale
        # Sleep first: a stack just asked to change has not finished yet.
        for delay in t.poll_delays(t.stack_poll_s):
            self.s.sleep(delay)
            body = self.get(stack_id)
            if body is None:
                return None
            if on_poll is not None:
                on_poll(body)
            if done(body.get("Status", "")):
                return body
            if self.clock() >= deadline:
                raise CloudTransientError(
                    f"stack {stack_id} still {body.get('Status')} after {timeout_s:.0f} s; "
                    f"a rerun resumes waiting on it", code="StackTimeout")
        raise AssertionError("unreachable")
