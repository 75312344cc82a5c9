"""Benchmark a registered endpoint and keep its history in Prefect artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from servenest.bench.run import BenchmarkOutcome, BenchSettings, run_benchmark
from servenest.bench.trend import trend_markdown
from tasks.artifacts import artifact_key


# Never persisted (it holds every request's record), and returned without the key.
@task(name="run-benchmark", cache_policy=NO_CACHE, persist_result=False)
def run_benchmark_task(settings: BenchSettings) -> BenchmarkOutcome:
    outcome = run_benchmark(settings)
    outcome.settings = replace(outcome.settings, api_key=None)
    get_run_logger().info("benchmark of %s:\n%s", settings.label, outcome.summary)
    return outcome


@task(name="load-benchmark-history", cache_policy=NO_CACHE)
def load_history(deployment: str) -> list[dict]:
    """The trend rows of the latest history artifact (each run republishes the whole table)."""
    key = artifact_key("bench", deployment)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )
    if not found or not isinstance(found[0].data, list | str):
        return []
    data = found[0].data
    if isinstance(data, str):
        data = json.loads(data)
    return [row for row in data if isinstance(row, dict)]


@task(name="publish-benchmark", cache_policy=NO_CACHE, persist_result=False)
def publish_benchmark(
    deployment: str, outcome: BenchmarkOutcome, history: list[dict], violations: list[str],
    regressions: list[str],
) -> None:
    verdict = "PASSED" if not violations and outcome.valid else "FAILED"
    notes = "".join(f"- {v}\n" for v in violations + [f"invalid: {r}" for r in outcome.invalid_reasons])
    notes += "".join(f"- regression: {r}\n" for r in regressions)
    notes = notes or "- all SLOs met\n"
    create_markdown_artifact(
        f"# Benchmark of {deployment}: {verdict}\n\n{notes}\n"
        f"```\n{outcome.summary}\n```\n\nclient CPU {outcome.client_cpu_per_request_ms:.3f} ms/request, "
        f"send lag p99 {outcome.send_lag_p99_ms:.2f} ms\n",
        key=artifact_key("bench-summary", deployment), description=f"Last benchmark of {deployment}",
    )
    create_table_artifact(
        history, key=artifact_key("bench", deployment),
        description=f"Benchmark trend of {deployment}, one row per run",
    )
    create_markdown_artifact(
        trend_markdown(deployment, history), key=artifact_key("bench-trend", deployment),
        description=f"Benchmark trend of {deployment} as a chart, with the cost of each run",
    )
    create_table_artifact(
        outcome.frame.fillna("").to_dict(orient="records"),
        key=artifact_key("bench-requests", deployment),
        description=f"Per-request results of the last benchmark of {deployment}",
    )
