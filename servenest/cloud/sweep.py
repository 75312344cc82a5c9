"""Which ServeNest stacks and weights-cache entries nothing needs any more (the sweep flow
deletes them)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from servenest.cloud.ros import DEPLOYMENT_TAG


@dataclass(frozen=True)
class Orphan:
    stack_id: str
    stack_name: str
    deployment: str
    status: str
    age_minutes: float


def _created(stack: dict) -> dt.datetime | None:
    raw = str(stack.get("CreateTime") or "").rstrip("Z")
    try:
        return dt.datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def find_orphans(stacks: list[dict], owned: set[str], now: dt.datetime, min_age_minutes: float) -> list[Orphan]:
    """Stacks tagged by ServeNest whose deployment is not owned, older than the minimum age
    (a provision that has not recorded itself anywhere yet is younger than that)."""
    out = []
    for stack in stacks:
        tags = {t.get("Key"): t.get("Value") for t in stack.get("Tags") or []}
        deployment = tags.get(DEPLOYMENT_TAG)
        if not deployment or deployment in owned:
            continue
        created = _created(stack)
        age = (now - created).total_seconds() / 60 if created else float("inf")
        if age < min_age_minutes:
            continue
        out.append(Orphan(stack["StackId"], stack.get("StackName", ""), deployment,
                          stack.get("Status", ""), round(age, 1)))
    return out


def stale_cache_entries(entries: list, in_use: set[tuple[str, str]]) -> list:
    """Cache entries (weights_cache.Entry) that failed, or whose (model, revision) no spec
    or recorded deployment names; one still being made is left alone."""
    return [e for e in entries if e.status == "failed"
            or (e.status == "accomplished" and (e.model, e.revision) not in in_use)]
