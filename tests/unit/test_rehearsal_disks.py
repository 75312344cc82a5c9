"""servenest/rehearsal/disks.py: the emulator's data disks and snapshots, driven by the REAL
ECS and ROS SDK clients, answer with ECS's fields and errors."""

from __future__ import annotations

import json

import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_ros20190910.client import Client as RosClient
from alibabacloud_tea_openapi.exceptions import ClientException

from servenest.rehearsal.cloud import CloudEmulator
from tests.unit.test_rehearsal_cloud import TEMPLATE, _config, _create, _poll

DISK_TEMPLATE = TEMPLATE.replace(
    "      ImageId: ubuntu_22\n",
    "      ImageId: ubuntu_22\n      DiskMappings:\n        - {Size: 40, Category: cloud_essd, DiskName: servenest-weights"
    "{snapshot}}\n")


@pytest.fixture
def emu(tmp_path):
    with CloudEmulator(seed=3) as e:
        e.snapshot_root = tmp_path / "snapshots"
        source = tmp_path / "weights"
        (source / "Qwen").mkdir(parents=True)
        (source / "Qwen" / "model.safetensors").write_bytes(b"w" * 100)
        e.snapshot_source = lambda _iid: source
        yield e


@pytest.fixture
def ecs(emu):
    return EcsClient(_config(emu))


def _stack_with_disk(emu, ros_client, monkeypatch, snapshot: str = "") -> str:
    import tests.unit.test_rehearsal_cloud as base

    monkeypatch.setattr(base, "TEMPLATE", DISK_TEMPLATE.replace("{snapshot}", f", SnapshotId: {snapshot}" if snapshot else ""))
    body = _poll(ros_client, _create(ros_client, name=f"sn-disk-{len(emu.stacks)}"))
    return body.status


def _describe(ecs, **kw) -> dict:
    return ecs.describe_snapshots(m.DescribeSnapshotsRequest(region_id="cn-hangzhou", **kw)).body.to_map()


def test_snapshot_lifecycle_with_ecs_fields(emu, ecs, monkeypatch):
    ros = RosClient(_config(emu))
    assert _stack_with_disk(emu, ros, monkeypatch) == "CREATE_COMPLETE"
    [iid] = emu.instances
    disks = ecs.describe_disks(m.DescribeDisksRequest(region_id="cn-hangzhou", instance_id=iid,
                                                      disk_type="data")).body.to_map()["Disks"]["Disk"]
    [disk] = disks
    assert disk["DiskId"].startswith("d-") and disk["Type"] == "data" and disk["Size"] == 40
    assert disk["Status"] == "In_use" and disk["DiskName"] == "servenest-weights" and disk["SourceSnapshotId"] == ""

    sid = ecs.create_snapshot(m.CreateSnapshotRequest(
        disk_id=disk["DiskId"], snapshot_name="servenest-weights-qwen", client_token="tok-1",
        tag=[m.CreateSnapshotRequestTag(key="servenest:cache", value="weights")])).body.snapshot_id
    assert sid.startswith("s-")
    # The same ClientToken is the same snapshot.
    assert ecs.create_snapshot(m.CreateSnapshotRequest(disk_id=disk["DiskId"], client_token="tok-1")).body.snapshot_id == sid
    first = _describe(ecs, snapshot_ids=json.dumps([sid]))["Snapshots"]["Snapshot"][0]
    assert first["Status"] == "progressing"
    done = _describe(ecs, snapshot_ids=json.dumps([sid]))
    snap = done["Snapshots"]["Snapshot"][0]
    assert done["TotalCount"] == 1 and snap["Status"] == "accomplished" and snap["Progress"] == "100%"
    assert snap["SourceDiskId"] == disk["DiskId"] and snap["SourceDiskSize"] == "40"
    assert snap["Tags"]["Tag"] == [{"TagKey": "servenest:cache", "TagValue": "weights"}]
    assert _describe(ecs, tag=[m.DescribeSnapshotsRequestTag(key="servenest:cache", value="other")])["TotalCount"] == 0

    # A disk made from it holds the files the source disk held at the call.
    assert _stack_with_disk(emu, ros, monkeypatch, sid) == "CREATE_COMPLETE"
    made = [i for i in emu.instances if i != iid][0]
    assert (emu.disk_content(made) / "Qwen" / "model.safetensors").read_bytes() == b"w" * 100

    with pytest.raises(ClientException) as err:
        ecs.delete_snapshot(m.DeleteSnapshotRequest(snapshot_id=sid))
    assert err.value.code == "SnapshotCreatedDisk"
    ecs.delete_snapshot(m.DeleteSnapshotRequest(snapshot_id=sid, force=True))
    assert _describe(ecs)["TotalCount"] == 0


def test_errors_follow_the_api(emu, ecs, monkeypatch):
    with pytest.raises(ClientException) as err:
        ecs.create_snapshot(m.CreateSnapshotRequest(disk_id="d-missing"))
    assert err.value.code == "InvalidDiskId.NotFound"
    with pytest.raises(ClientException) as err:
        ecs.delete_snapshot(m.DeleteSnapshotRequest(snapshot_id="s-missing"))
    assert err.value.code == "InvalidSnapshotId.NotFound"
    ros = RosClient(_config(emu))
    _stack_with_disk(emu, ros, monkeypatch)
    [disk] = emu.disks
    for bad in ("auto-weights", "1weights", "x"):
        with pytest.raises(ClientException) as err:
            ecs.create_snapshot(m.CreateSnapshotRequest(disk_id=disk, snapshot_name=bad))
        assert err.value.code == "InvalidSnapshotName.Malformed"
    # A template naming a snapshot that does not exist fails its instance.
    assert _stack_with_disk(emu, ros, monkeypatch, "s-nothere") in ("CREATE_FAILED", "CREATE_ROLLBACK_COMPLETE")
    # Injected: the snapshot is accepted, then ends failed.
    emu.faults.update({"fail_snapshots": 1})
    sid = ecs.create_snapshot(m.CreateSnapshotRequest(disk_id=disk)).body.snapshot_id
    _describe(ecs)
    assert _describe(ecs, snapshot_ids=json.dumps([sid]))["Snapshots"]["Snapshot"][0]["Status"] == "failed"
