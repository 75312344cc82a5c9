"""The events ServeNest's deployment triggers listen for. Systems outside emit them through
the REST API (examples/trigger.py, which repeats these names so it needs only httpx)."""

from __future__ import annotations

# Another system (a model registry, CI that fine-tunes) publishes a new revision of a model.
REVISION_PUBLISHED = "servenest.model.revision.published"
# A run that ended like this leaves resources behind unless its own clean-up ran.
FAILED_RUN_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.Cancelled")


def model_resource_id(model: str) -> str:
    return f"servenest.model.{model}"


# What each watch pass found (servenest.endpoint.healthy|degraded|down), what heal did
# (servenest.endpoint.healed|failed), about the resource endpoint_resource_id(<deployment>).
ENDPOINT_EVENT_PREFIX = "servenest.endpoint."
ENDPOINT_DOWN = ENDPOINT_EVENT_PREFIX + "down"
ENDPOINT_HEALED = ENDPOINT_EVENT_PREFIX + "healed"
ENDPOINT_FAILED = ENDPOINT_EVENT_PREFIX + "failed"
# The related resource that names heal/<deployment>: the heal automation runs the deployment
# it finds there (a run-deployment action with source "inferred").
HEAL_ROLE = "heal"


def endpoint_resource_id(deployment: str) -> str:
    return f"{ENDPOINT_EVENT_PREFIX}{deployment}"
