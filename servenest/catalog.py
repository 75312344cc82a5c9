"""Every model and GPU instance type the seed documents name, with the facts the fit check needs.

Architecture numbers come from each model's official config.json; weight sizes are the
official checkpoints' on-disk sizes (GB = 1e9 bytes; Qwen3-0.6B/4B/8B/32B and QwQ-32B
read off the hub listing, the rest parameters x dtype bytes); ``context_length`` is
``max_position_embeddings``, which is what vLLM serves by default (Qwen3: 32K prompt +
8K generation); ``min_gpu_memory_gib`` is the minimum seed 004 states for Qwen3. Instance types are from Alibaba's
"GPU-accelerated compute-optimized instance families" table.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from servenest.errors import SpecError, UnknownModelError

GIB = 1024**3


@dataclass(frozen=True)
class ModelInfo:
    id: str
    params_b: float
    weight_gb: float
    weight_dtype: str
    context_length: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    # Multi-head latent attention (DeepSeek V3/R1) caches one compressed vector per
    # layer instead of K and V per head: kv_lora_rank + qk_rope_head_dim elements.
    mla_kv_dim: int | None = None
    active_params_b: float | None = None
    min_gpu_memory_gib: int | None = None
    seed_instance_types: tuple[str, ...] = ()
    seed_gpu_kinds: tuple[str, ...] = ()
    modelscope_id: str | None = None
    huggingface_id: str | None = None

    @property
    def weight_gib(self) -> float:
        return self.weight_gb * 1e9 / GIB

    def kv_bytes_per_token(self, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token occupies across all layers (vLLM's page accounting)."""
        if self.mla_kv_dim is not None:
            return self.num_layers * self.mla_kv_dim * kv_dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes


def _qwen(name: str, **kw) -> ModelInfo:
    return ModelInfo(id=name, modelscope_id=name, huggingface_id=name, weight_dtype="bf16", **kw)


_H20 = "ecs.ebmgn8v.48xlarge"
_A10X8 = "ecs.gn7i-8x.16xlarge"
_A10X4 = "ecs.gn7i-4x.8xlarge"

MODELS: dict[str, ModelInfo] = {
    m.id: m
    for m in [
        _qwen("Qwen/Qwen3-0.6B", params_b=0.6, weight_gb=1.52, context_length=40960, num_layers=28,
              num_attention_heads=16, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=24),
        _qwen("Qwen/Qwen3-1.7B", params_b=1.7, weight_gb=4.1, context_length=40960, num_layers=28,
              num_attention_heads=16, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=24),
        _qwen("Qwen/Qwen3-4B", params_b=4.0, weight_gb=8.06, context_length=40960, num_layers=36,
              num_attention_heads=32, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=24),
        _qwen("Qwen/Qwen3-8B", params_b=8.2, weight_gb=16.4, context_length=40960, num_layers=36,
              num_attention_heads=32, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=24),
        _qwen("Qwen/Qwen3-14B", params_b=14.8, weight_gb=29.5, context_length=40960, num_layers=40,
              num_attention_heads=40, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=48),
        _qwen("Qwen/Qwen3-30B-A3B", params_b=30.5, active_params_b=3.3, weight_gb=61.1,
              context_length=40960, num_layers=48, num_attention_heads=32, num_kv_heads=4,
              head_dim=128, min_gpu_memory_gib=96),
        _qwen("Qwen/Qwen3-32B", params_b=32.8, weight_gb=65.5, context_length=40960, num_layers=64,
              num_attention_heads=64, num_kv_heads=8, head_dim=128, min_gpu_memory_gib=96,
              seed_instance_types=(_A10X8, _H20)),
        _qwen("Qwen/Qwen3-235B-A22B", params_b=235.0, active_params_b=22.0, weight_gb=470.0,
              context_length=40960, num_layers=94, num_attention_heads=64, num_kv_heads=4,
              head_dim=128, min_gpu_memory_gib=8 * 96, seed_instance_types=(_H20,)),
        _qwen("Qwen/QwQ-32B", params_b=32.8, weight_gb=65.5, context_length=40960, num_layers=64,
              num_attention_heads=40, num_kv_heads=8, head_dim=128,
              seed_instance_types=(_A10X4, _A10X8), seed_gpu_kinds=("H20",)),
        _qwen("Qwen/Qwen2.5-32B-Instruct", params_b=32.8, weight_gb=65.5, context_length=32768,
              num_layers=64, num_attention_heads=40, num_kv_heads=8, head_dim=128,
              seed_instance_types=(_A10X8,)),
        _qwen("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", params_b=7.6, weight_gb=15.2,
              context_length=131072, num_layers=28, num_attention_heads=28, num_kv_heads=4,
              head_dim=128, seed_instance_types=(_A10X8,)),
        _qwen("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", params_b=32.8, weight_gb=65.5,
              context_length=131072, num_layers=64, num_attention_heads=40, num_kv_heads=8,
              head_dim=128, seed_instance_types=(_A10X8,), seed_gpu_kinds=("PPU",)),
        _qwen("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", params_b=70.6, weight_gb=141.1,
              context_length=131072, num_layers=80, num_attention_heads=64, num_kv_heads=8,
              head_dim=128, seed_instance_types=(_A10X8,), seed_gpu_kinds=("PPU",)),
        ModelInfo(id="deepseek-ai/DeepSeek-R1", modelscope_id="deepseek-ai/DeepSeek-R1",
                  huggingface_id="deepseek-ai/DeepSeek-R1", params_b=671.0, active_params_b=37.0,
                  weight_gb=688.6, weight_dtype="fp8", context_length=163840, num_layers=61,
                  num_attention_heads=128, num_kv_heads=128, head_dim=192, mla_kv_dim=512 + 64,
                  seed_instance_types=(_H20,), seed_gpu_kinds=("H20", "PPU")),
        ModelInfo(id="deepseek-ai/DeepSeek-V3", modelscope_id="deepseek-ai/DeepSeek-V3",
                  huggingface_id="deepseek-ai/DeepSeek-V3", params_b=671.0, active_params_b=37.0,
                  weight_gb=688.6, weight_dtype="fp8", context_length=163840, num_layers=61,
                  num_attention_heads=128, num_kv_heads=128, head_dim=192, mla_kv_dim=512 + 64,
                  seed_instance_types=(_H20,)),
        # Generated on this machine (servenest/engines/tiny_model.py): Qwen2 architecture,
        # random weights. Every serving path is the real one; the text is gibberish.
        ModelInfo(id="servenest/tiny-qwen2", params_b=0.000424, weight_gb=0.00085,
                  weight_dtype="bf16", context_length=2048, num_layers=2, num_attention_heads=2,
                  num_kv_heads=1, head_dim=64),
    ]
}

BUILTIN_MODEL = "servenest/tiny-qwen2"


@dataclass(frozen=True)
class GpuKind:
    name: str
    memory_gib: int
    verified: bool = True


GPU_KINDS: dict[str, GpuKind] = {
    g.name: g
    for g in [
        GpuKind("A10", 24),
        GpuKind("L20", 48),
        GpuKind("H20", 96),
        # T-Head PPU is sold through Lingjun/PAI and ACS; no ECS spec sheet was found.
        GpuKind("PPU", 96, verified=False),
    ]
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu: str
    gpu_count: int
    vcpu: int
    memory_gib: int
    notes: str = ""
    # 8-GPU NVSwitch machines: CUDA needs nvidia-fabricmanager (of the driver's exact
    # version) running before any GPU can be used (NVIDIA Fabric Manager user guide).
    nvswitch: bool = False

    @property
    def gpu_memory_gib(self) -> int:
        return GPU_KINDS[self.gpu].memory_gib


INSTANCE_TYPES: dict[str, InstanceType] = {
    t.name: t
    for t in [
        InstanceType("ecs.gn7i-c8g1.2xlarge", "A10", 1, 8, 30),
        InstanceType("ecs.gn7i-c16g1.4xlarge", "A10", 1, 16, 60),
        InstanceType("ecs.gn7i-2x.8xlarge", "A10", 2, 32, 128),
        InstanceType("ecs.gn7i-4x.8xlarge", "A10", 4, 32, 128),
        InstanceType("ecs.gn7i-4x.16xlarge", "A10", 4, 64, 256),
        InstanceType("ecs.gn7i-8x.16xlarge", "A10", 8, 64, 256),
        InstanceType("ecs.gn7i-8x.32xlarge", "A10", 8, 128, 512),
        InstanceType("ecs.gn8is.2xlarge", "L20", 1, 8, 64, "region-restricted"),
        InstanceType("ecs.gn8is.4xlarge", "L20", 1, 16, 128, "region-restricted"),
        InstanceType("ecs.gn8is-2x.8xlarge", "L20", 2, 32, 256, "region-restricted"),
        InstanceType("ecs.gn8is-4x.16xlarge", "L20", 4, 64, 512, "region-restricted"),
        InstanceType("ecs.gn8is-8x.32xlarge", "L20", 8, 128, 1024, "region-restricted"),
        InstanceType("ecs.ebmgn8v.48xlarge", "H20", 8, 192, 1024, "bare metal, UEFI images only",
                     nvswitch=True),
    ]
}


def _did_you_mean(key: str, known: dict, cutoff: float) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(close)}?" if close else ""


def get_model(model_id: str) -> ModelInfo:
    if model_id in MODELS:
        return MODELS[model_id]
    raise UnknownModelError(
        f"model {model_id!r} is not in the catalog.{_did_you_mean(model_id, MODELS, 0.5)} "
        f"Known models: {', '.join(sorted(MODELS))}. "
        "For a model outside the catalog, describe it under `model_facts:` in the spec."
    )


def get_instance_type(name: str) -> InstanceType:
    if name in INSTANCE_TYPES:
        return INSTANCE_TYPES[name]
    raise SpecError(
        f"instance type {name!r} is not a known GPU instance type."
        f"{_did_you_mean(name, INSTANCE_TYPES, 0.6)} Known: {', '.join(INSTANCE_TYPES)}."
    )


def get_gpu_kind(name: str) -> GpuKind:
    if name in GPU_KINDS:
        return GPU_KINDS[name]
    raise SpecError(f"GPU kind {name!r} is unknown; known: {', '.join(GPU_KINDS)}.")


__all__ = [
    "BUILTIN_MODEL", "GPU_KINDS", "INSTANCE_TYPES", "MODELS", "GpuKind", "InstanceType",
    "ModelInfo", "get_gpu_kind", "get_instance_type", "get_model",
]
