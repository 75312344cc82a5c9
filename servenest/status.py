"""`servenest status`: the registered deployments and whether their engines run."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from blocks.endpoint import ServeNestEndpoint
from servenest.spec import load_spec_data
from servenest.state import DeploymentState
from servenest.topology import EngineStatus, open_topology


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


def _money(amount: float, currency: str | None) -> str:
    return f"{amount:.2f} {currency}" if currency else f"{amount:.2f}"


def _verdict(record: dict, now: float) -> str:
    """Passed or failed, and how long ago, from a record with ``passed`` and ``at`` (unix time)."""
    verdict = "passed" if record.get("passed") else "failed"
    return verdict + (f" {_age(now - record['at'])} ago" if record.get("at") else "")


def _benchmark(last: dict, now: float) -> str:
    """The headline of ``summarize_benchmark``'s figures; a figure not measured is left out."""
    if not last:
        return "-"
    parts = []
    if last.get("p99_ttft_ms") is not None:
        parts.append(f"p99 TTFT {last['p99_ttft_ms']:.0f} ms")
    if last.get("output_throughput") is not None:
        parts.append(f"{last['output_throughput']:.1f} tok/s")
    return ", ".join([*parts, _verdict(last, now)])


def status_row(block: ServeNestEndpoint, engine: EngineStatus, now: float) -> dict:
    """One deployment as `servenest status` shows it: pure, so it is tested without Prefect."""
    age_s = max(0.0, now - block.registered_at)
    # An estimate made before the resources existed, so what it has cost so far is approximate.
    hourly = block.hourly_cost
    return {
        "deployment": block.deployment, "topology": block.topology, "instance": block.instance_name,
        "engine": ("running " if engine.running else "DOWN ") + engine.detail,
        "base_url": block.base_url, "model": block.served_model_name,
        "age": _age(age_s),
        "hourly_cost": "-" if hourly is None else _money(hourly, block.currency) + "/h",
        "cost_so_far": "-" if hourly is None else "≈ " + _money(hourly * age_s / 3600, block.currency),
        "last_gate": _verdict(block.last_gate, now) if block.last_gate else "-",
        "last_benchmark": _benchmark(block.last_benchmark, now),
    }


def live_deployments() -> list[dict]:
    rows = []
    for block in _endpoint_blocks():
        spec = load_spec_data(block.spec, origin=f"registered spec of {block.deployment}")
        engine = open_topology(spec, DeploymentState.from_dict(block.state)).status()
        rows.append(status_row(block, engine, time.time()))
    return rows


def registered_deployments() -> list[str]:
    return [b.deployment for b in _endpoint_blocks()]
