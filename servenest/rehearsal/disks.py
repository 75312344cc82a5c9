"""ECS data disks and snapshots of the cloud emulator (a mixin of CloudEmulator).

Fields and errors follow the ECS 2014-05-26 API reference (CreateSnapshot,
DescribeSnapshots, DeleteSnapshot, DescribeDisks) and ROS ``ALIYUN::ECS::Instance``
``DiskMappings``:

- a data disk (``d-`` + 20 hex) per DiskMappings entry, ``Type`` ``data``, ``Status``
  ``In_use``, ``SourceSnapshotId`` when made from a snapshot, released with its instance;
  a ``SnapshotId`` that does not exist (or is not ``accomplished``) fails the instance
  resource with ``InvalidSnapshotId.NotFound``;
- CreateSnapshot: ``DiskId`` required (``InvalidDiskId.NotFound``, 404), ``SnapshotName``
  2-128 characters, starting with a letter, not with ``auto`` or ``http(s)://``
  (``InvalidSnapshotName.Malformed``, 400), up to 20 ``Tag.N.Key/Value``, ``ClientToken``
  idempotent; answers ``SnapshotId`` (``s-`` + 20 hex) at once, the snapshot is
  ``progressing`` for ``snapshot_polls`` DescribeSnapshots calls, then ``accomplished``;
- DescribeSnapshots: ``SnapshotIds`` as a JSON array string, ``DiskId``, ``InstanceId``,
  ``Status`` (``progressing``/``accomplished``/``failed``/``all``), ``Tag.N``; paged;
  tags come back as ``Tags.Tag[].TagKey/TagValue``, ``SourceDiskSize`` as a string of GiB;
- DeleteSnapshot: ``InvalidSnapshotId.NotFound`` (404); a snapshot disks were made from
  needs ``Force`` (else ``SnapshotCreatedDisk``, 403).

A snapshot's content is a copy of the files the instance's disk holds, which the emulated
host keeps under its ``/root/llm-model`` (``snapshot_source``); a disk made from it starts
with those files (``disk_content``). Fault knob ``fail_snapshots``: the next N
CreateSnapshot calls end ``failed``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SNAPSHOT_NAME = re.compile(r"^[A-Za-z\u4e00-\u9fa5][\w.:\-\u4e00-\u9fa5]{1,127}$")


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _tags(params: dict) -> list[dict[str, str]]:
    out = []
    for n in range(1, 21):
        key = params.get(f"Tag.{n}.Key")
        if key is not None:
            out.append({"TagKey": key, "TagValue": params.get(f"Tag.{n}.Value", "")})
    return out


class DisksMixin:
    """State and actions; the host class provides ``lock``, ``instances`` and ``ApiError``."""

    snapshot_polls: int = 1
    # instance id -> the directory whose files a snapshot of its data disk captures.
    snapshot_source: Callable[[str], Path | None] | None = None
    snapshot_root: Path | None = None

    def _disks_init(self) -> None:
        self.disks: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.snapshot_tokens: dict[str, str] = {}

    def _snapshot_dir(self, snapshot_id: str) -> Path:
        if self.snapshot_root is None:
            self.snapshot_root = Path(tempfile.mkdtemp(prefix="servenest-snapshots-"))
        return Path(self.snapshot_root) / snapshot_id

    # -- disks ---------------------------------------------------------------------------
    def _create_data_disks(self, instance_id: str, mappings: list[dict]) -> None:
        """Disks of a new instance (a bad SnapshotId fails its resource: ``_failure_for``)."""
        for m in mappings or []:
            did = "d-" + uuid.uuid4().hex[:20]
            snap = m.get("SnapshotId") or ""
            self.disks[did] = {
                "DiskId": did, "InstanceId": instance_id, "Type": "data", "Status": "In_use",
                "Category": m.get("Category", "cloud_essd"), "Size": int(m.get("Size") or 20),
                "SourceSnapshotId": snap, "DiskName": m.get("DiskName", ""), "Device": "/dev/xvdb",
                "CreationTime": _now(), "DeleteWithInstance": True,
                "ZoneId": self.instances.get(instance_id, {}).get("zone", ""),
            }
            if snap in self.snapshots:
                self.snapshots[snap]["_disks_made"] += 1
        return None

    def disk_content(self, instance_id: str) -> Path | None:
        """The snapshot files a data disk of ``instance_id`` was made from, if any."""
        with self.lock:
            for disk in self.disks.values():
                if disk["InstanceId"] == instance_id and disk["SourceSnapshotId"]:
                    return self._snapshot_dir(disk["SourceSnapshotId"])
        return None

    def _release_disks(self, instance_ids: list[str]) -> None:
        for did in [d for d, v in self.disks.items() if v["InstanceId"] in instance_ids]:
            del self.disks[did]

    def _ecs_DescribeDisks(self, params: dict) -> dict:
        ids = json.loads(params["DiskIds"]) if params.get("DiskIds") else None
        kind = params.get("DiskType", "all")
        with self.lock:
            rows = [d for d in self.disks.values()
                    if (not params.get("InstanceId") or d["InstanceId"] == params["InstanceId"])
                    and (ids is None or d["DiskId"] in ids) and kind in ("all", d["Type"])]
        return _page(params, rows, "Disks", "Disk")

    # -- snapshots -----------------------------------------------------------------------
    def _ecs_CreateSnapshot(self, params: dict) -> dict:
        token = params.get("ClientToken")
        with self.lock:
            if token and token in self.snapshot_tokens:
                return {"SnapshotId": self.snapshot_tokens[token]}
            disk = self.disks.get(params.get("DiskId", ""))
            if disk is None:
                raise self.ApiError(404, "InvalidDiskId.NotFound", "The specified disk does not exist.")
            name = params.get("SnapshotName", "")
            if name and (not _SNAPSHOT_NAME.match(name) or name.startswith(("auto", "http://", "https://"))):
                raise self.ApiError(400, "InvalidSnapshotName.Malformed",
                                    "Specified snapshot name is not valid.")
            sid = "s-" + uuid.uuid4().hex[:20]
            failed = self.faults.fail_snapshots > 0
            self.faults.fail_snapshots -= 1 if failed else 0
            self.snapshots[sid] = {
                "SnapshotId": sid, "SnapshotName": name, "Description": params.get("Description", ""),
                "SourceDiskId": disk["DiskId"], "SourceDiskType": disk["Type"],
                "SourceDiskSize": str(disk["Size"]), "CreationTime": _now(), "LastModifiedTime": _now(),
                "Status": "progressing", "Progress": "0%", "Category": "standard", "Usage": "none",
                "Encrypted": False, "InstantAccess": False, "RegionId": params.get("RegionId", ""),
                "Tags": {"Tag": _tags(params)}, "_polls": 0, "_fails": failed, "_disks_made": 0,
            }
            if token:
                self.snapshot_tokens[token] = sid
            source = self.snapshot_source(disk["InstanceId"]) if self.snapshot_source else None
        # The point-in-time copy: taken now, as ECS does at the call.
        target = self._snapshot_dir(sid)
        if source is not None and Path(source).is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
        return {"SnapshotId": sid}

    def _advance_snapshot(self, snap: dict) -> None:
        if snap["Status"] != "progressing":
            return
        snap["_polls"] += 1
        if snap["_polls"] > self.snapshot_polls:
            snap["Status"] = "failed" if snap["_fails"] else "accomplished"
            snap["Progress"] = "100%" if not snap["_fails"] else snap["Progress"]
            snap["LastModifiedTime"] = _now()
        else:
            snap["Progress"] = "50%"

    def _ecs_DescribeSnapshots(self, params: dict) -> dict:
        ids = json.loads(params["SnapshotIds"]) if params.get("SnapshotIds") else None
        status = params.get("Status", "all")
        wanted = {(t["TagKey"], t["TagValue"]) for t in _tags(params)}
        with self.lock:
            rows = []
            for snap in self.snapshots.values():
                self._advance_snapshot(snap)
                disk = self.disks.get(snap["SourceDiskId"], {})
                tags = {(t["TagKey"], t["TagValue"]) for t in snap["Tags"]["Tag"]}
                if ((ids is None or snap["SnapshotId"] in ids) and status in ("all", snap["Status"])
                        and wanted <= tags
                        and (not params.get("DiskId") or snap["SourceDiskId"] == params["DiskId"])
                        and (not params.get("InstanceId") or disk.get("InstanceId") == params["InstanceId"])):
                    rows.append({k: v for k, v in snap.items() if not k.startswith("_")})
        return _page(params, rows, "Snapshots", "Snapshot")

    def _ecs_DeleteSnapshot(self, params: dict) -> dict:
        sid = params.get("SnapshotId", "")
        with self.lock:
            snap = self.snapshots.get(sid)
            if snap is None:
                raise self.ApiError(404, "InvalidSnapshotId.NotFound", "The specified snapshot does not exist.")
            in_use = any(d["SourceSnapshotId"] == sid for d in self.disks.values())
            if in_use and str(params.get("Force", "false")).lower() != "true":
                raise self.ApiError(403, "SnapshotCreatedDisk",
                                    "The snapshot has been used to create disks; set Force to delete it.")
            del self.snapshots[sid]
        shutil.rmtree(self._snapshot_dir(sid), ignore_errors=True)
        return {}


def _page(params: dict, rows: list[dict], outer: str, inner: str) -> dict:
    size = min(int(params.get("PageSize") or 10), 100)
    number = int(params.get("PageNumber") or 1)
    return {outer: {inner: rows[(number - 1) * size: number * size]}, "TotalCount": len(rows),
            "PageNumber": number, "PageSize": size}
