"""Weights cache: an ECS snapshot of a weights data disk, per (model, revision, manifest
digest, region).

Why a data-disk snapshot (numbers: servenest/time_to_ready.py ``cache_options``; for
Qwen3-235B's 470 GB the weights phase of a new host is ~94 min from ModelScope at 800
Mbit/s, ~45 min from the snapshot, ~22 min from an in-region OSS copy at an assumed 10
Gbit/s): it halves the phase with nothing to own but ECS (no bucket, no second copy to keep
in step, no per-request reads); a disk made from it at instance creation through ROS
``DiskMappings`` ``SnapshotId`` holds the files at once, for both ``ecs-dual`` nodes and a
second slot alike, and it costs only snapshot storage. Its blocks arrive from snapshot
storage as they are first read, which is what keeps it slower than OSS by the model; OSS
is the next step where the staging time matters more than owning a bucket. The other
candidates stay possible: a custom image (adds the bootstrap and the
engine image, but an image of a 600 GB system disk takes long to make and is bound to one
instance family's boot mode), an in-region OSS copy over the internal endpoint with
parallel ranged reads (fast, but a bucket to own and a download every time), NAS shared by
both dual nodes (a file system that bills while idle).

Life of an entry:

- ``weights.cache: snapshot`` gives every instance a data disk named ``WEIGHTS_DISK_NAME``
  (the bootstrap formats a blank one with label ``FS_LABEL`` and mounts it on
  ``/root/llm-model``);
- before the stack is created, :func:`find` looks for an ``accomplished`` snapshot tagged
  with the model and revision in the region; the template then makes each weights disk
  from it, and staging checks every file against the copy's manifest (sha256, ``full``):
  a corrupt or partial copy fails the check and is staged again, never served;
- after a verified staging that downloaded (no usable entry), :func:`create` snapshots the
  first host's weights disk, tagged with the manifest digest and size; a failure there
  is logged and serving goes on (only the cache is missing);
- ``servenest cache ls`` / ``cache rm`` list and remove entries; the sweep keeps an entry
  while a spec in deployments/ or a registered deployment names its model.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from dataclasses import dataclass

from servenest.errors import CloudError
from servenest.spec import DeploymentSpec

log = logging.getLogger(__name__)

CACHE_TAG = "servenest:cache"
MODEL_TAG = "servenest:model"
REVISION_TAG = "servenest:revision"
DIGEST_TAG = "servenest:digest"
BYTES_TAG = "servenest:bytes"
WEIGHTS_DISK_NAME = "servenest-weights"
FS_LABEL = "servenest-weights"
DEFAULT_REVISION = "default"
# Snapshot storage, pay-as-you-go per GB-month of what the snapshot holds (standard
# snapshots, mainland China regions): assumed list price; the price preview says so.
SNAPSHOT_CNY_PER_GB_MONTH = 0.12
GIB = 2**30


def weights_disk(spec: DeploymentSpec, snapshot_id: str | None = None) -> dict:
    """ROS ``DiskMappings`` entry of the weights disk: the weights, 10% for the hub's
    temporary files, 20 GiB spare; from ``snapshot_id`` when a cache entry exists."""
    size = math.ceil(spec.model_info.weight_gb * 1e9 * 1.1 / GIB) + 20
    disk = {"Category": spec.cloud.disk_category, "Size": size, "DiskName": WEIGHTS_DISK_NAME,
            "Description": f"ServeNest weights of {spec.model}"}
    if snapshot_id:
        disk["SnapshotId"] = snapshot_id
    return disk


@dataclass(frozen=True)
class Entry:
    snapshot_id: str
    model: str
    revision: str
    digest: str
    bytes: int
    region: str
    created: str
    status: str

    @property
    def monthly_cost(self) -> float:
        return round(self.bytes / 1e9 * SNAPSHOT_CNY_PER_GB_MONTH, 2)

    def row(self) -> dict:
        return {"model": self.model, "revision": self.revision, "digest": self.digest,
                "bytes": self.bytes, "size_gb": round(self.bytes / 1e9, 2), "where": f"{self.snapshot_id} ({self.region})",
                "created": self.created, "status": self.status,
                "monthly_cny": self.monthly_cost}


def _revision(spec: DeploymentSpec) -> str:
    return spec.weights.revision or DEFAULT_REVISION


def _entry(row: dict, region: str) -> Entry:
    tags = {t.get("TagKey"): t.get("TagValue", "") for t in (row.get("Tags") or {}).get("Tag") or []}
    size = tags.get(BYTES_TAG, "")
    return Entry(row["SnapshotId"], tags.get(MODEL_TAG, "?"), tags.get(REVISION_TAG, "?"),
                 tags.get(DIGEST_TAG, ""), int(size) if size.isdigit() else 0, region,
                 row.get("CreationTime", ""), row.get("Status", ""))


def _describe(session, tags: dict[str, str], status: str = "all", ids: list[str] | None = None) -> list[dict]:
    from alibabacloud_ecs20140526 import models as m

    rows: list[dict] = []
    page = 1
    while True:
        body = session.call("ecs", "describe_snapshots", m.DescribeSnapshotsRequest(
            region_id=session.region, status=status, page_size=100, page_number=page,
            snapshot_ids=json.dumps(ids) if ids else None,
            tag=[m.DescribeSnapshotsRequestTag(key=k, value=v) for k, v in tags.items()]))
        rows += (body.get("Snapshots") or {}).get("Snapshot") or []
        if len(rows) >= int(body.get("TotalCount") or 0) or not body.get("Snapshots"):
            return rows
        page += 1


def find(session, spec: DeploymentSpec) -> Entry | None:
    """The newest usable entry for the spec's model and revision in the session's region."""
    rows = _describe(session, {CACHE_TAG: "weights", MODEL_TAG: spec.model, REVISION_TAG: _revision(spec)},
                     status="accomplished")
    entries = sorted((_entry(r, session.region) for r in rows), key=lambda e: e.created)
    return entries[-1] if entries else None


def entries(session) -> list[Entry]:
    return [_entry(r, session.region) for r in _describe(session, {CACHE_TAG: "weights"})]


def entry(session, snapshot_id: str) -> Entry | None:
    rows = _describe(session, {}, ids=[snapshot_id])
    return _entry(rows[0], session.region) if rows else None


def create(session, spec: DeploymentSpec, instance_id: str, digest: str, size: int) -> str:
    """Snapshot the weights disk of ``instance_id`` (the call returns at once; the entry is
    usable once ECS reports it ``accomplished``)."""
    from alibabacloud_ecs20140526 import models as m

    disks = (session.call("ecs", "describe_disks", m.DescribeDisksRequest(
        region_id=session.region, instance_id=instance_id, disk_type="data")).get("Disks") or {}).get("Disk") or []
    disk = next((d for d in disks if d.get("DiskName") == WEIGHTS_DISK_NAME), None)
    if disk is None:
        raise LookupError(f"{instance_id} has no data disk named {WEIGHTS_DISK_NAME}")
    tags = {CACHE_TAG: "weights", MODEL_TAG: spec.model, REVISION_TAG: _revision(spec),
            DIGEST_TAG: digest, BYTES_TAG: str(size)}
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", spec.model).strip("-").lower()[:80]
    body = session.call("ecs", "create_snapshot", m.CreateSnapshotRequest(
        disk_id=disk["DiskId"], snapshot_name=f"servenest-weights-{slug}-{digest[:12]}",
        description=f"ServeNest weights cache: {spec.model}@{_revision(spec)} digest {digest}",
        tag=[m.CreateSnapshotRequestTag(key=k, value=v) for k, v in tags.items()],
        client_token=uuid.uuid4().hex))
    return body["SnapshotId"]


def delete(session, snapshot_id: str) -> None:
    from alibabacloud_ecs20140526 import models as m

    # Force: disks made from it (live deployments) keep their data; only the cache goes.
    session.call("ecs", "delete_snapshot", m.DeleteSnapshotRequest(snapshot_id=snapshot_id, force=True))


def after_staging(session, spec: DeploymentSpec, record: dict, staged, instance_id: str) -> dict:
    """The deployment's cache record once its weights are verified on every host: the entry
    it came from was good, or is dropped (it failed the manifest check and was restaged);
    without a good entry a new one is made. A failure here never fails the provision."""
    record = dict(record)
    restored = record.get("snapshot_id")
    if restored and staged.reused and staged.digest == record.get("digest"):
        record["used"] = True
        return record
    if restored:
        log.warning("weights cache %s of %s failed the manifest check and was restaged; removing it",
                    restored, spec.model)
        try:
            delete(session, restored)
        except CloudError as exc:
            log.warning("could not remove the bad cache entry %s: %s", restored, exc)
        record = {"dropped": restored}
    if record.get("created"):
        return record  # a rerun of this staging: the snapshot is on its way already
    try:
        record["created"] = create(session, spec, instance_id, staged.digest, staged.bytes)
        log.info("weights cache of %s: snapshot %s of %s", spec.model, record["created"], instance_id)
    except (CloudError, LookupError) as exc:
        log.warning("weights cache of %s not created; serving goes on without it: %s", spec.model, exc)
        record["error"] = str(exc)
    return record


def plan(spec: DeploymentSpec) -> dict:
    """What `servenest plan` says about the cache (it touches no API, so no entry lookup)."""
    if spec.weights.cache != "snapshot":
        return {"mode": "none", "note": "weights.cache: snapshot would keep a reusable copy"}
    return {"mode": "snapshot", "key": {"model": spec.model, "revision": _revision(spec),
                                        "region": spec.cloud.region},
            "data_disk": weights_disk(spec),
            "use": "at provision, the newest accomplished snapshot tagged with the model and revision "
                   "(DescribeSnapshots) becomes every host's weights disk; staging then checks each file "
                   "against its manifest (sha256)",
            "create": "after the first verified staging without one: CreateSnapshot of the weights disk, "
                      "tagged with the manifest digest",
            "monthly_cny": round(spec.model_info.weight_gb * SNAPSHOT_CNY_PER_GB_MONTH, 2)}
