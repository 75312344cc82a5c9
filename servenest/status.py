"""`servenest status`: the registered deployments and whether their engines run."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from blocks.endpoint import ServeNestEndpoint
from servenest.spec import load_spec_data
from servenest.state import DeploymentState
from servenest.topology import open_topology


def _endpoint_blocks() -> list[ServeNestEndpoint]:
    with get_client(sync_client=True) as client:
        try:
            docs = client.read_block_documents_by_type(ServeNestEndpoint.get_block_type_slug())
        except ObjectNotFound:  # the block type is registered by the first registration
            return []
    return [ServeNestEndpoint.load(d.name) for d in docs if d.name]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def live_deployments() -> list[dict]:
    rows = []
    for block in _endpoint_blocks():
        spec = load_spec_data(block.spec, origin=f"registered spec of {block.deployment}")
        status = open_topology(spec, DeploymentState.from_dict(block.state)).status()
        gate = block.last_gate or {}
        rows.append({
            "deployment": block.deployment, "topology": block.topology,
            "engine": ("running " if status.running else "DOWN ") + status.detail,
            "base_url": block.base_url, "model": block.served_model_name,
            "age": _age(time.time() - block.registered_at),
            "last_gate": ("passed" if gate.get("passed") else "failed") + (
                f" {_age(time.time() - gate['at'])} ago" if gate.get("at") else ""),
        })
    return rows


def registered_deployments() -> list[str]:
    return [b.deployment for b in _endpoint_blocks()]
