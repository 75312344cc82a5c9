"""sweep: find (and, when asked, delete) ServeNest stacks that no deployment owns, and
weights-cache snapshots that no spec refers to."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from servenest.cloud import weights_cache
from servenest.cloud.credentials import open_session
from servenest.cloud.ros import MANAGED_TAG, Stacks
from servenest.cloud.sweep import Orphan, find_orphans, stale_cache_entries
from tasks.registry import owned_deployments
from tasks.retry import transient_only


@task(name="list-managed-stacks", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def list_managed_stacks(region: str, credentials_block: str) -> list[dict]:
    return Stacks(open_session(region, credentials_block)).list_tagged({MANAGED_TAG: "true"})


@task(name="delete-orphan-stack", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def delete_orphan_stack(region: str, credentials_block: str, orphan: Orphan) -> bool:
    return Stacks(open_session(region, credentials_block)).delete(orphan.stack_id)


SPEC_DIR = Path(__file__).resolve().parents[1] / "deployments"


@task(name="list-cache-entries", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def list_cache_entries(region: str, credentials_block: str) -> list[weights_cache.Entry]:
    return weights_cache.entries(open_session(region, credentials_block))


@task(name="models-in-use", cache_policy=NO_CACHE)
def models_in_use() -> set[tuple[str, str]]:
    """(model, revision) of every spec in deployments/ and every deployment recorded here."""
    from servenest.spec import load_spec_file
    from servenest.state import load_state, recorded_deployments

    specs = [load_spec_file(p).model_dump(mode="json") for p in sorted(SPEC_DIR.glob("*.yaml"))]
    specs += [s.spec for s in map(load_state, recorded_deployments()) if s is not None and s.spec]
    return {(s["model"], (s.get("weights") or {}).get("revision") or weights_cache.DEFAULT_REVISION)
            for s in specs}


@task(name="delete-cache-entry", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=transient_only)
def delete_cache_entry(region: str, credentials_block: str, snapshot_id: str) -> None:
    weights_cache.delete(open_session(region, credentials_block), snapshot_id)


@flow(name="sweep", flow_run_name="sweep-{region}")
def sweep(region: str = "cn-hangzhou", credentials_block: str = "default", dry_run: bool = True,
          min_age_minutes: float = 60.0) -> dict:
    """List stacks tagged servenest:managed whose deployment is neither registered, recorded
    on this machine, nor being provisioned; delete them unless ``dry_run``.

    Args:
        region: Region to sweep.
        credentials_block: AlibabaCloudCredentials block name.
        dry_run: Only report (the default); set false to delete.
        min_age_minutes: Leave younger stacks alone (a provision may not have recorded itself yet).
    """
    logger = get_run_logger()
    stacks = list_managed_stacks(region, credentials_block)
    owned = owned_deployments()
    orphans = find_orphans(stacks, owned, dt.datetime.now(dt.UTC), min_age_minutes)
    deleted = []
    for orphan in orphans:
        if dry_run:
            logger.warning("orphan stack %s (%s) of %s; dry run, not deleted",
                           orphan.stack_name, orphan.stack_id, orphan.deployment)
        elif delete_orphan_stack(region, credentials_block, orphan):
            deleted.append(orphan.stack_id)
    stale = stale_cache_entries(list_cache_entries(region, credentials_block), models_in_use())
    cache_deleted = []
    for entry in stale:
        if dry_run:
            logger.warning("weights cache %s of %s@%s is %s; dry run, not deleted", entry.snapshot_id,
                           entry.model, entry.revision, entry.status if entry.status == "failed" else "unused")
        else:
            delete_cache_entry(region, credentials_block, entry.snapshot_id)
            cache_deleted.append(entry.snapshot_id)
    rows = [asdict(o) | {"deleted": o.stack_id in deleted} for o in orphans]
    create_table_artifact(rows or [{"result": f"no orphan stacks in {region}"}], key=f"sweep-{region}",
                          description=f"ServeNest stacks in {region} that no deployment owns")
    return {"region": region, "managed": len(stacks), "orphans": len(orphans), "deleted": deleted,
            "stale_cache": [e.snapshot_id for e in stale], "cache_deleted": cache_deleted, "dry_run": dry_run}
