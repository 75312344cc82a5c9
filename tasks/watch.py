"""The watch's steps: probe the registered endpoint, keep its history, say what it found."""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.endpoint import ServeNestEndpoint
from blocks.health import ServeNestHealth
from servenest.events import HEAL_ROLE, endpoint_resource_id
from servenest.topology import Topology
from servenest.watch import Check, History, ProbeTarget, markdown, probe
from tasks.artifacts import artifact_key
from tasks.secrets import load_api_key

HISTORY_PREFIX = "health-"


@task(name="probe-endpoint", cache_policy=NO_CACHE)
def probe_endpoint(topology: Topology, block: ServeNestEndpoint, previous: Check | None) -> Check:
    """One bounded pass against the registered endpoint (its address, never a guess)."""
    target = ProbeTarget(block.base_url, block.served_model_name,
                         load_api_key(block.api_key_secret).get_secret_value(), topology.engine)
    check = probe(target, topology.spec.watch, topology.runtime_state, previous)
    get_run_logger().info("%s is %s in %.2f s%s", block.deployment, check.outcome, check.seconds,
                          f": {'; '.join(check.reasons)}" if check.reasons else "")
    return check


def load_history(deployment: str) -> History:
    try:
        return History.from_dict(ServeNestHealth.load(HISTORY_PREFIX + deployment).history)
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            return History()
        raise


@task(name="save-health-history", cache_policy=NO_CACHE)
def save_history(deployment: str, history: History) -> None:
    ServeNestHealth(history=history.to_dict()).save(HISTORY_PREFIX + deployment, overwrite=True)


@task(name="emit-endpoint-event", cache_policy=NO_CACHE)
def emit_endpoint_event(deployment: str, event: str, payload: dict) -> str | None:
    """``event`` about the deployment's endpoint; related to heal/<deployment> when it is
    deployed, so the heal automation knows which deployment to run."""
    from prefect.events import emit_event

    related = []
    heal_id = _heal_deployment_id(deployment)
    if heal_id:
        # First among the related resources: the automation runs the first deployment it finds.
        related.append({"prefect.resource.id": f"prefect.deployment.{heal_id}",
                        "prefect.resource.role": HEAL_ROLE, "prefect.resource.name": deployment})
    sent = emit_event(event, resource={"prefect.resource.id": endpoint_resource_id(deployment),
                                       "prefect.resource.name": deployment},
                      related=related, payload=payload)
    return str(sent.id) if sent else None


def _heal_deployment_id(deployment: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return str(client.read_deployment_by_name(f"heal/{deployment}").id)
        except ObjectNotFound:
            return None


@task(name="publish-watch", cache_policy=NO_CACHE)
def publish_watch(deployment: str, history: History) -> None:
    create_markdown_artifact(markdown(deployment, history, time.time()), key=artifact_key("watch", deployment),
                             description=f"Health of {deployment}: last check, uptime, last incident")


def check_payload(check: Check) -> dict:
    return {k: v for k, v in asdict(check).items() if v not in (None, "", [])}
