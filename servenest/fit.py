"""Will the model fit? Checked before anything is created or paid for.

The rule mirrors the one vLLM applies at start-up (the KV cache must hold at least one
max-length sequence), made per device before a GPU is rented:

    usable   = memory per device x gpu_memory_utilization
    required = weights / (TP x PP) + KV bytes/token/device x max_model_len x min_kv_sequences
               + runtime reserve (CUDA context, activations, NCCL buffers)

plus the seeds' stated minimum GPU memory, and vLLM's structural rules: tensor
parallel size divides the attention heads, and TP x PP equals the devices in use.
Every candidate instance type is checked, because capacity failover may pick any.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from servenest.catalog import GIB, get_gpu_kind, get_instance_type
from servenest.errors import DoesNotFitError, SpecError
from servenest.spec import DeploymentSpec

# Per-device memory vLLM needs beyond weights and KV cache (CUDA context, activation
# peak during profiling, NCCL buffers). 1 GiB is what vLLM's profiler typically leaves
# for a non-torch allocation on A10/H20; it is a floor, not an estimate for MoE peaks.
GPU_RUNTIME_RESERVE_GIB = 1.0
# The CPU build runs three processes (API server, engine core, worker); about 3 GB
# resident was measured here for the tiny model, most of it torch itself.
CPU_RUNTIME_RESERVE_GIB = 3.0


@dataclass(frozen=True)
class Hardware:
    label: str
    accelerator: str
    devices_per_node: int
    nodes: int
    memory_per_device_gib: float
    utilization: float
    # The CPU engine reserves an explicit KV space (VLLM_CPU_KVCACHE_SPACE).
    kv_space_gib: float | None = None
    reserve_per_device_gib: float = GPU_RUNTIME_RESERVE_GIB

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes

    @property
    def usable_gib(self) -> float:
        return self.devices * self.memory_per_device_gib * self.utilization


@dataclass(frozen=True)
class FitReport:
    model: str
    hardware: str
    weights_gib: float
    kv_gib: float
    reserve_gib: float
    required_gib: float
    usable_gib: float
    tensor_parallel_size: int
    pipeline_parallel_size: int
    devices: int = 1

    @property
    def headroom_gib(self) -> float:
        return self.usable_gib - self.required_gib

    def summary(self) -> str:
        where = "per device" if self.devices > 1 else "on the device"
        return (
            f"{self.model} on {self.hardware}, {where}: weights {self.weights_gib:.1f} GiB + KV "
            f"{self.kv_gib:.1f} GiB + runtime {self.reserve_gib:.1f} GiB = "
            f"{self.required_gib:.1f} GiB of {self.usable_gib:.1f} GiB usable "
            f"(TP {self.tensor_parallel_size} x PP {self.pipeline_parallel_size})"
        )


def host_memory_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GIB
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / GIB


def hardware_candidates(spec: DeploymentSpec) -> list[Hardware]:
    """The hardware each candidate placement of the spec would run on."""
    util = spec.engine.gpu_memory_utilization
    if spec.topology == "local" and not spec.cloud.gpu_kind:
        return [
            Hardware(
                label="this machine (CPU engine)", accelerator="CPU", devices_per_node=1,
                nodes=1, memory_per_device_gib=host_memory_gib(), utilization=1.0,
                kv_space_gib=spec.local.cpu_kvcache_gib,
                reserve_per_device_gib=CPU_RUNTIME_RESERVE_GIB,
            )
        ]
    if spec.topology in ("ack", "local"):  # a local GPU host is described like a pod
        kind = get_gpu_kind(spec.cloud.gpu_kind)
        per_node = spec.cloud.gpus_per_node or 1
        return [
            Hardware(
                label=f"{spec.cloud.nodes} x {per_node}x{kind.name}", accelerator=kind.name,
                devices_per_node=per_node, nodes=spec.cloud.nodes,
                memory_per_device_gib=kind.memory_gib, utilization=util,
            )
        ]
    out = []
    for name in spec.cloud.instance_types:
        itype = get_instance_type(name)
        out.append(
            Hardware(
                label=f"{spec.cloud.nodes} x {name} ({itype.gpu_count}x{itype.gpu})",
                accelerator=itype.gpu, devices_per_node=itype.gpu_count, nodes=spec.cloud.nodes,
                memory_per_device_gib=itype.gpu_memory_gib, utilization=util,
            )
        )
    if not out:
        raise SpecError(f"topology {spec.topology} needs cloud.instance_types")
    return out


def parallelism(spec: DeploymentSpec, hw: Hardware) -> tuple[int, int]:
    """(TP, PP): explicit values from the spec, else all devices of a node x all nodes."""
    if hw.accelerator == "CPU":
        return spec.engine.tensor_parallel_size or 1, spec.engine.pipeline_parallel_size or 1
    return (
        spec.engine.tensor_parallel_size or hw.devices_per_node,
        spec.engine.pipeline_parallel_size or hw.nodes,
    )


def kv_bytes_per_token_per_device(spec: DeploymentSpec, tp: int, pp: int) -> float:
    """KV-cache bytes one token takes on each device, as vLLM allocates it.

    Pipeline stages split the layers. Tensor parallel ranks split the KV heads, but never
    below one head per rank (heads are replicated when TP exceeds them), and MLA's
    latent cache is not split at all: every rank holds all of it.
    """
    info = spec.model_info
    layers = info.num_layers / pp
    if info.mla_kv_dim is not None:
        return layers * info.mla_kv_dim * 2
    return layers * 2 * max(1, info.num_kv_heads // tp) * info.head_dim * 2


def check_fit(spec: DeploymentSpec, hw: Hardware) -> FitReport:
    """Checked per device, because that is where vLLM runs out of memory."""
    info = spec.model_info
    tp, pp = parallelism(spec, hw)
    problems = []
    if info.num_attention_heads % tp:
        problems.append(
            f"tensor parallel size {tp} does not divide {info.id}'s "
            f"{info.num_attention_heads} attention heads (vLLM refuses this at start-up)"
        )
    if hw.accelerator != "CPU" and tp * pp != hw.devices:
        problems.append(
            f"TP {tp} x PP {pp} = {tp * pp} does not match the {hw.devices} "
            f"{hw.accelerator} devices of {hw.label}"
        )
    shards = tp * pp if hw.accelerator != "CPU" else 1
    tokens = spec.max_model_len * spec.engine.min_kv_sequences
    kv_gib = kv_bytes_per_token_per_device(spec, tp if hw.accelerator != "CPU" else 1,
                                           pp if hw.accelerator != "CPU" else 1) * tokens / GIB
    if hw.kv_space_gib is not None:
        # CPU engine: the KV cache is a fixed reservation that must itself hold the sequences.
        if kv_gib > hw.kv_space_gib:
            problems.append(
                f"{spec.engine.min_kv_sequences} sequence(s) of {spec.max_model_len} tokens need "
                f"{kv_gib:.2f} GiB of KV cache but local.cpu_kvcache_gib is {hw.kv_space_gib}"
            )
        kv_gib = hw.kv_space_gib
    weights = info.weight_gib / shards
    report = FitReport(
        model=info.id, hardware=hw.label, weights_gib=weights, kv_gib=kv_gib,
        reserve_gib=hw.reserve_per_device_gib,
        required_gib=weights + kv_gib + hw.reserve_per_device_gib,
        usable_gib=hw.memory_per_device_gib * hw.utilization, tensor_parallel_size=tp,
        pipeline_parallel_size=pp, devices=hw.devices,
    )
    if report.required_gib > report.usable_gib:
        problems.append(f"does not fit: {report.summary()}")
    total_memory = hw.devices * hw.memory_per_device_gib
    if hw.accelerator != "CPU" and info.min_gpu_memory_gib and total_memory < info.min_gpu_memory_gib:
        problems.append(
            f"{info.id} needs at least {info.min_gpu_memory_gib} GiB of GPU memory "
            f"(seed deployment guide); {hw.label} has {total_memory:.0f} GiB"
        )
    if problems:
        raise DoesNotFitError(f"{info.id} on {hw.label}: " + "; ".join(problems))
    return report


def check_spec_fits(spec: DeploymentSpec) -> list[FitReport]:
    """Fit reports for every candidate; raises on the first candidate that cannot work."""
    return [check_fit(spec, hw) for hw in hardware_candidates(spec)]
