"""sweep: find (and, when asked, delete) ServeNest stacks that no deployment owns."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from servenest.cloud.credentials import open_session
from servenest.cloud.ros import MANAGED_TAG, Stacks
from servenest.cloud.sweep import Orphan, find_orphans
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
    rows = [asdict(o) | {"deleted": o.stack_id in deleted} for o in orphans]
    create_table_artifact(rows or [{"result": f"no orphan stacks in {region}"}], key=f"sweep-{region}",
                          description=f"ServeNest stacks in {region} that no deployment owns")
    return {"region": region, "managed": len(stacks), "orphans": len(orphans), "deleted": deleted,
            "dry_run": dry_run}
