"""How long an ECS provision takes to reach ready, before anything is spent.

Plain arithmetic over documented (or plainly stated) figures, per phase: instance
creation, host bootstrap, engine image pull, weights (by source and its bandwidth, plus
the manifest's hashing), engine load, gate. Two cases:

- ``cold``: a fresh account: public image, nothing on the disks;
- ``warm``: hosts that already have it all (bootstrap stamp, engine image, weights that
  verify in place): a rerun, a relaunch, an in-place redeploy on the same stack (which
  provision adopts: no instance creation);
- ``cached`` (``weights.cache: snapshot`` with an entry): new hosts whose weights disk is
  made from the cache snapshot: nothing downloaded, every file checked against the
  manifest while the disk fetches its blocks from snapshot storage on first read.

Figures and where they come from (a figure marked *assumed* has no published source and
should be replaced by a measured stage timing from a real account; ``publish_stage_timings``
records one per run):

- public bandwidth: ``cloud.bandwidth_mbps`` (pay by traffic: the cap is what the link
  can carry; inbound traffic, i.e. downloads, is not billed by Alibaba Cloud's internet
  traffic pricing, so raising the cap costs nothing);
- ModelScope: no published per-client limit; *assumed* able to fill 800 Mbit/s
  (``MODELSCOPE_MAX_MBPS``);
- ESSD PL1 (the system disk's default level) throughput ``min(120 + 0.5 x GiB, 350)``
  MB/s: Alibaba Cloud "ESSDs" performance table;
- instance creation, bootstrap steps, engine image size, engine start: *assumed* (see the
  constants), the bootstrap's steps from servenest/cloud/bootstrap.py;
- the seeds' times to ready (ComputeNest images with the weights baked in): seed 002
  QwQ-32B about 10 min, seed 000 Qwen3-235B about 30 min, seed 001 DeepSeek-R1 on two
  nodes about 30 min.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from servenest.catalog import get_instance_type
from servenest.errors import SpecError
from servenest.spec import DeploymentSpec

GB = 10**9
# Assumed: ROS creates the VPC, vSwitch and security group in ~20 s; a VM instance is
# Running ~90 s after; an ECS Bare Metal instance (ebmgn8v) POSTs an 8-GPU server first.
CREATE_VM_S = 120.0
CREATE_BARE_METAL_S = 480.0
# Assumed, per bootstrap step on a public image (packages from the in-region mirror).
BOOTSTRAP_S = {"apt sources and update": 30.0, "NVIDIA driver (download, DKMS build)": 180.0,
               "docker-ce": 40.0, "nvidia-container-toolkit": 20.0, "checks and stamp": 10.0}
BOOTSTRAP_FABRIC_S = 20.0
BOOTSTRAP_RDMA_S = 90.0  # rdma-core, ibverbs and Alibaba's eRDMA installer
BOOTSTRAP_WARM_S = 5.0  # the stamp and the readiness test
# Assumed: the seeds' egs engine images are ~15 GB compressed, ~30 GB unpacked.
ENGINE_IMAGE_BYTES = 15 * GB
UNPACK_BYTES_PER_S = 200e6
MODELSCOPE_MAX_MBPS = 800.0  # assumed
# Without a public IP the hosts reach the internet only through a NAT gateway of an
# existing VPC (cloud.vpc_id), whose bandwidth the spec does not say: assumed.
NAT_ASSUMED_MBPS = 100.0
SHA256_BYTES_PER_S = 500e6  # sha256sum, one core, data in the page cache (assumed)
PAGE_CACHE_BYTES_PER_S = 2e9  # engine reads of weights still in RAM after the download
ENGINE_START_S = 120.0  # assumed: vLLM profiling and CUDA graph capture after the load
GATE_S = 30.0  # health, models, one completion, metrics
# A disk made from a snapshot loads each block from snapshot storage on first read, below
# the disk's own throughput (Alibaba Cloud: "performance may drop on first access" of such
# disks); assumed half of it.
SNAPSHOT_FIRST_READ_FACTOR = 0.5
# An in-region OSS copy over the internal endpoint with parallel ranged reads: assumed 10
# Gbit/s (instance NIC and OSS internal bandwidth both allow it on the GPU families here).
OSS_INTERNAL_BYTES_PER_S = 1.25e9
SEED_MINUTES = {"Qwen/QwQ-32B": 10, "Qwen/Qwen3-235B-A22B": 30, "deepseek-ai/DeepSeek-R1": 30}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    basis: str


def essd_pl1_bytes_per_s(disk_gib: int) -> float:
    """Alibaba Cloud's ESSD PL1 throughput: min(120 + 0.5 x capacity GiB, 350) MB/s."""
    return min(120 + 0.5 * disk_gib, 350) * 1e6


def _link_bytes_per_s(mbps: float) -> float:
    return mbps * 1e6 / 8


def weights_download(spec: DeploymentSpec) -> Phase:
    """ModelScope over the host's public link (the only ECS source in this version)."""
    size = spec.model_info.weight_gb * GB
    mbps = min(_link_mbps(spec), MODELSCOPE_MAX_MBPS)
    link = (f"cloud.bandwidth_mbps {spec.cloud.bandwidth_mbps}" if spec.cloud.bandwidth_mbps
            else f"no public IP: the VPC's own NAT gateway, assumed {NAT_ASSUMED_MBPS:g} Mbit/s")
    seconds = size / _link_bytes_per_s(mbps) + size / SHA256_BYTES_PER_S
    return Phase("weights", seconds, f"{size / GB:.0f} GB from ModelScope at {mbps:g} Mbit/s "
                 f"({link}), then sha256 of every file at {SHA256_BYTES_PER_S / 1e6:.0f} MB/s "
                 "for the manifest")


def _link_mbps(spec: DeploymentSpec) -> float:
    return spec.cloud.bandwidth_mbps or NAT_ASSUMED_MBPS


def _weights_disk_gib(spec: DeploymentSpec) -> int:
    """The disk the weights live on: their own data disk with a cache, else the system disk."""
    from servenest.cloud.weights_cache import weights_disk

    return weights_disk(spec)["Size"] if spec.weights.cache == "snapshot" else spec.cloud.system_disk_gb


def _cached_weights(spec: DeploymentSpec) -> Phase:
    size = spec.model_info.weight_gb * GB
    rate = essd_pl1_bytes_per_s(_weights_disk_gib(spec)) * SNAPSHOT_FIRST_READ_FACTOR
    rate = min(rate, SHA256_BYTES_PER_S)
    return Phase("weights", size / rate, f"{size / GB:.0f} GB on a disk made from the cache snapshot, "
                 f"every file checked (sha256) at {rate / 1e6:.0f} MB/s as its blocks arrive")


def cache_options(spec: DeploymentSpec) -> dict[str, float]:
    """The weights phase of a new host, in seconds, by where the copy comes from."""
    size = spec.model_info.weight_gb * GB
    return {"modelscope (no cache)": round(weights_download(spec).seconds),
            "data-disk snapshot (chosen)": round(_cached_weights(spec).seconds),
            "in-region OSS, internal endpoint": round(size / OSS_INTERNAL_BYTES_PER_S + size / SHA256_BYTES_PER_S)}


def _phases(spec: DeploymentSpec, warm: bool, cached: bool = False) -> list[Phase]:
    itype = get_instance_type(spec.cloud.instance_types[0])
    bare_metal = "bare metal" in itype.notes
    size = spec.model_info.weight_gb * GB
    disk = essd_pl1_bytes_per_s(_weights_disk_gib(spec))
    if warm:  # the same stack: provision adopts it
        out = [Phase("instance creation", 0.0, "the stack exists; provision adopts it")]
    else:
        out = [Phase("instance creation", CREATE_BARE_METAL_S if bare_metal else CREATE_VM_S,
                     f"{'bare metal' if bare_metal else 'VM'} {itype.name} and its network (assumed)")]
    if warm or spec.cloud.image_prepared:
        out.append(Phase("bootstrap", BOOTSTRAP_WARM_S, "stamp found / prepared image: checks only"))
    else:
        steps = dict(BOOTSTRAP_S)
        if itype.nvswitch:
            steps["nvidia-fabricmanager"] = BOOTSTRAP_FABRIC_S
        if spec.topology == "ecs-dual":
            steps["RDMA user-space"] = BOOTSTRAP_RDMA_S
        out.append(Phase("bootstrap", sum(steps.values()),
                         "public image: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items())
                         + " (assumed; a driver that needs a reboot adds ~3 min)"))
    if warm:
        out.append(Phase("image pull", 0.0, "engine image already on the host"))
        out.append(Phase("weights", 10.0 if spec.weights.verify == "quick" else size / disk,
                         f"verified in place ({spec.weights.verify} check of the manifest)"))
        out.append(Phase("engine load", size / disk + ENGINE_START_S,
                         f"{size / GB:.0f} GB from the ESSD PL1 disk at {disk / 1e6:.0f} MB/s, "
                         f"plus {ENGINE_START_S:.0f} s engine start"))
    else:
        pull = ENGINE_IMAGE_BYTES / _link_bytes_per_s(_link_mbps(spec))
        out.append(Phase("image pull", pull + 2 * ENGINE_IMAGE_BYTES / UNPACK_BYTES_PER_S,
                         f"{ENGINE_IMAGE_BYTES / GB:.0f} GB engine image over the public link, "
                         "unpacked to ~2x (assumed size)"))
        out.append(_cached_weights(spec) if cached else weights_download(spec))
        # Just downloaded (or checked): in the page cache if RAM holds them, else read back from the disk.
        cached = itype.memory_gib * 2**30 > size * 1.2
        rate = PAGE_CACHE_BYTES_PER_S if cached else disk
        out.append(Phase("engine load", size / rate + ENGINE_START_S,
                         f"{size / GB:.0f} GB from {'the page cache' if cached else 'the ESSD PL1 disk'} at "
                         f"{rate / 1e6:.0f} MB/s, plus {ENGINE_START_S:.0f} s engine start"))
    out.append(Phase("gate", GATE_S, "health, models, one completion, metrics"))
    return out


def estimate(spec: DeploymentSpec) -> dict:
    """``{"cold": {...}, "warm": {...}, "limit_s", "seed_minutes"}`` for an ECS spec."""
    out: dict = {}
    cases = [("cold", False, False), ("warm", True, False)]
    if spec.weights.cache == "snapshot":
        cases.append(("cached", False, True))
    for case, warm, cached in cases:
        phases = _phases(spec, warm, cached)
        out[case] = {"total_s": round(sum(p.seconds for p in phases), 1),
                     "phases": [asdict(p) | {"seconds": round(p.seconds, 1)} for p in phases]}
    out["staging_limit_s"] = spec.weights.max_staging_hours * 3600
    out["weights_by_source_s"] = cache_options(spec)
    out["seed_minutes"] = SEED_MINUTES.get(spec.model)
    return out


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def check_staging_limit(spec: DeploymentSpec) -> None:
    """Refuse, before any spend, a spec whose cold staging would outlast its limit (only
    when the spec states its bandwidth: a NAT gateway's is unknown)."""
    if not spec.cloud.bandwidth_mbps:
        return
    phase = weights_download(spec)
    limit = spec.weights.max_staging_hours * 3600
    if phase.seconds <= limit:
        return
    size = spec.model_info.weight_gb * GB
    faster = MODELSCOPE_MAX_MBPS
    at_max = size / _link_bytes_per_s(faster) + size / SHA256_BYTES_PER_S
    raise SpecError(
        f"{spec.name}: staging {spec.model} cold would take {minutes(phase.seconds)} ({phase.basis}), "
        f"over weights.max_staging_hours {spec.weights.max_staging_hours:g}. Ways out: raise "
        f"cloud.bandwidth_mbps (pay by traffic: downloads are inbound and not billed; at "
        f"{faster:g} Mbit/s it takes {minutes(at_max)}); stage from a copy in the region "
        f"(an OSS bucket over the internal endpoint, or a custom image with the weights, "
        f"cloud.image_prepared); or raise weights.max_staging_hours. Nothing was created.")


def markdown(spec: DeploymentSpec) -> str:
    """The time-to-ready table of the price preview."""
    est = estimate(spec)
    cold, warm = est["cold"]["phases"], est["warm"]["phases"]
    rows = "\n".join(f"| {c['name']} | {minutes(c['seconds'])} | {minutes(w['seconds'])} | {c['basis']} |"
                     for c, w in zip(cold, warm, strict=True))
    seed = f" The seed's baked image reached ready in about {est['seed_minutes']} min." if est["seed_minutes"] else ""
    return (f"## Time to ready\n\n| Phase | Cold | Warm | Basis (cold) |\n|---|---|---|---|\n{rows}\n"
            f"| **total** | **{minutes(est['cold']['total_s'])}** | **{minutes(est['warm']['total_s'])}** | |\n\n"
            "Cold: a fresh account (public image, empty disks). Warm: hosts that already hold the "
            f"bootstrap, the engine image and verified weights.{seed} Figures: servenest/time_to_ready.py.\n")
