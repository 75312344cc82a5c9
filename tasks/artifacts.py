"""Artifacts that show in the Prefect UI: the connection card and the stage timings."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from servenest.connection import connection_card
from servenest.paths import servenest_executable
from servenest.topology import Topology


def artifact_key(kind: str, deployment: str) -> str:
    # Keys are lowercase letters, digits and dashes; one key per deployment keeps history.
    return f"{kind}-{deployment}"


@task(name="publish-connection-card", cache_policy=NO_CACHE)
def publish_connection_card(topology: Topology, api_key: SecretStr, deployment: str | None = None) -> str:
    ep = topology.endpoint()
    deployment = deployment or topology.spec.name
    card = connection_card(
        deployment, ep.base_url, ep.served_model_name, api_key.get_secret_value(),
        topology.spec.access.api_key_secret, ep.public, servenest=servenest_executable(),
    )
    create_markdown_artifact(
        card, key=artifact_key("connection", deployment), description=f"How to call {deployment}",
    )
    return card


@task(name="publish-stage-timings", cache_policy=NO_CACHE)
def publish_stage_timings(deployment: str, rows: list[dict]) -> None:
    create_table_artifact(
        rows, key=artifact_key("stage-timings", deployment),
        description=f"Stage timings of the last pipeline run of {deployment}",
    )
