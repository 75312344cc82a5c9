"""Which stacks the sweep calls orphans."""

from __future__ import annotations

import datetime as dt

from servenest.cloud.sweep import find_orphans

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def stack(name: str, deployment: str | None, minutes_ago: float) -> dict:
    created = (NOW - dt.timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S")
    tags = [{"Key": "servenest:managed", "Value": "true"}]
    if deployment:
        tags.append({"Key": "servenest:deployment", "Value": deployment})
    return {"StackId": f"id-{name}", "StackName": name, "Status": "CREATE_COMPLETE",
            "CreateTime": created, "Tags": tags}


def test_only_old_unowned_stacks_are_orphans():
    stacks = [stack("a", "owned", 600), stack("b", "gone", 600), stack("c", "gone-new", 5),
              stack("d", None, 600)]
    orphans = find_orphans(stacks, {"owned"}, NOW, min_age_minutes=60)
    assert [(o.stack_name, o.deployment, o.age_minutes) for o in orphans] == [("b", "gone", 600.0)]


def test_a_stack_without_a_readable_create_time_counts_as_old():
    s = stack("x", "gone", 0) | {"CreateTime": "garbage"}
    assert [o.stack_id for o in find_orphans([s], set(), NOW, 60)] == ["id-x"]
