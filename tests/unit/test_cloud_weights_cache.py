"""servenest/cloud/weights_cache.py: the weights disk in the template, the plan, the entries."""

from __future__ import annotations

import yaml

from servenest.cloud import weights_cache
from servenest.cloud.ros_template import render_template_yaml

H20 = "ecs.ebmgn8v.48xlarge"


def test_the_weights_disk_holds_the_weights_with_room(make_spec):
    spec = make_spec("ecs", model="Qwen/Qwen3-235B-A22B", weights={"cache": "snapshot"},
                     cloud={"instance_types": [H20], "image": "ubuntu_22_04_uefi"})
    disk = weights_cache.weights_disk(spec)
    assert disk["DiskName"] == weights_cache.WEIGHTS_DISK_NAME and "SnapshotId" not in disk
    assert disk["Size"] * 2**30 >= 470e9 * 1.1
    assert weights_cache.weights_disk(spec, "s-abc")["SnapshotId"] == "s-abc"


def test_only_a_cache_spec_gets_the_disk_and_from_the_entry(make_spec):
    plain = make_spec("ecs")
    cached = make_spec("ecs", weights={"cache": "snapshot"})
    itype = plain.cloud.instance_types[0]
    zone = "cn-hangzhou-i"

    def instance(spec, snapshot=None):
        resources = yaml.safe_load(render_template_yaml(spec, zone, itype, snapshot))["Resources"]
        return next(r for r in resources.values() if r["Type"] == "ALIYUN::ECS::Instance")["Properties"]

    assert "DiskMappings" not in instance(plain)
    assert instance(cached)["DiskMappings"][0]["DiskName"] == "servenest-weights"
    assert instance(cached, "s-123")["DiskMappings"][0]["SnapshotId"] == "s-123"


def test_plan_says_what_the_cache_will_do(make_spec):
    assert weights_cache.plan(make_spec("ecs"))["mode"] == "none"
    plan = weights_cache.plan(make_spec("ecs", weights={"cache": "snapshot", "revision": "v2"}))
    assert plan["mode"] == "snapshot" and plan["key"] == {"model": "Qwen/QwQ-32B", "revision": "v2",
                                                          "region": "cn-hangzhou"}
    assert plan["monthly_cny"] == round(65.5 * weights_cache.SNAPSHOT_CNY_PER_GB_MONTH, 2)


def test_entries_read_their_tags():
    row = {"SnapshotId": "s-1", "Status": "accomplished", "CreationTime": "2026-12-06T03:00:00Z",
           "Tags": {"Tag": [{"TagKey": weights_cache.MODEL_TAG, "TagValue": "Qwen/QwQ-32B"},
                            {"TagKey": weights_cache.REVISION_TAG, "TagValue": "default"},
                            {"TagKey": weights_cache.DIGEST_TAG, "TagValue": "ab" * 32},
                            {"TagKey": weights_cache.BYTES_TAG, "TagValue": "65500000000"}]}}
    entry = weights_cache._entry(row, "cn-hangzhou")
    assert entry.row()["size_gb"] == 65.5 and entry.row()["where"] == "s-1 (cn-hangzhou)"
    assert entry.monthly_cost == round(65.5 * weights_cache.SNAPSHOT_CNY_PER_GB_MONTH, 2)
