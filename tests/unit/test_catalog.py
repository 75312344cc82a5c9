"""servenest/catalog.py: the models and GPU instance types the seed documents name."""

from __future__ import annotations

import pytest

from servenest.catalog import (
    BUILTIN_MODEL,
    GIB,
    GPU_KINDS,
    INSTANCE_TYPES,
    MODELS,
    get_gpu_kind,
    get_instance_type,
    get_model,
)
from servenest.errors import SpecError, UnknownModelError

SEED_MODELS = [
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B",
    "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-32B", "Qwen/Qwen3-235B-A22B", "Qwen/QwQ-32B",
    "Qwen/Qwen2.5-32B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3",
]


@pytest.mark.parametrize("model_id", SEED_MODELS)
def test_every_seed_model_is_in_the_catalog(model_id):
    info = get_model(model_id)
    assert info.id == model_id
    assert info.modelscope_id and info.huggingface_id  # stageable from either hub


def test_builtin_model_is_in_the_catalog():
    assert BUILTIN_MODEL in MODELS
    assert MODELS[BUILTIN_MODEL].modelscope_id is None  # generated locally, never downloaded


@pytest.mark.parametrize(
    "model_id, gib",
    [
        ("Qwen/Qwen3-0.6B", 24), ("Qwen/Qwen3-1.7B", 24), ("Qwen/Qwen3-4B", 24),
        ("Qwen/Qwen3-8B", 24), ("Qwen/Qwen3-14B", 48), ("Qwen/Qwen3-30B-A3B", 96),
        ("Qwen/Qwen3-32B", 96), ("Qwen/Qwen3-235B-A22B", 8 * 96),
    ],
)
def test_qwen3_seed_minimum_gpu_memory(model_id, gib):
    assert get_model(model_id).min_gpu_memory_gib == gib


def test_kv_bytes_per_token_gqa_qwen3_32b():
    # K and V x 64 layers x 8 KV heads x head_dim 128 x 2 bytes (bf16)
    assert get_model("Qwen/Qwen3-32B").kv_bytes_per_token() == 2 * 64 * 8 * 128 * 2 == 262144


def test_kv_bytes_per_token_mla_deepseek_r1():
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes; no K/V pair, no heads
    assert get_model("deepseek-ai/DeepSeek-R1").kv_bytes_per_token() == 61 * (512 + 64) * 2 == 70272


def test_kv_bytes_scale_with_kv_dtype():
    info = get_model("Qwen/Qwen3-32B")
    assert info.kv_bytes_per_token(kv_dtype_bytes=1) * 2 == info.kv_bytes_per_token()


def test_weight_gib_converts_decimal_gb():
    info = get_model("Qwen/Qwen3-32B")
    assert info.weight_gib == pytest.approx(65.5e9 / GIB)
    assert info.weight_gib < info.weight_gb


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_model_facts_are_self_consistent(model_id):
    info = MODELS[model_id]
    assert info.num_attention_heads % info.num_kv_heads == 0, "GQA groups must be whole"
    assert info.context_length > 0 and info.num_layers > 0
    bytes_per_param = {"bf16": 2, "fp8": 1}[info.weight_dtype]
    # On-disk size is parameters x dtype bytes, give or take embeddings and scales.
    assert info.weight_gb == pytest.approx(info.params_b * bytes_per_param, rel=0.3)
    if info.active_params_b is not None:
        assert info.active_params_b < info.params_b
    for name in info.seed_instance_types:
        assert name in INSTANCE_TYPES
    for kind in info.seed_gpu_kinds:
        assert kind in GPU_KINDS


@pytest.mark.parametrize(
    "name, gpu, count, memory_gib",
    [
        ("ecs.gn7i-8x.16xlarge", "A10", 8, 24),
        ("ecs.gn7i-4x.8xlarge", "A10", 4, 24),
        ("ecs.gn7i-c8g1.2xlarge", "A10", 1, 24),
        ("ecs.ebmgn8v.48xlarge", "H20", 8, 96),
    ],
)
def test_seed_instance_types(name, gpu, count, memory_gib):
    itype = get_instance_type(name)
    assert (itype.gpu, itype.gpu_count, itype.gpu_memory_gib) == (gpu, count, memory_gib)


def test_every_instance_type_has_a_known_gpu():
    for itype in INSTANCE_TYPES.values():
        assert itype.gpu in GPU_KINDS
        assert itype.gpu_count >= 1


def test_unknown_model_error_suggests_a_close_match():
    with pytest.raises(UnknownModelError) as info:
        get_model("Qwen/Qwen3-8b")
    msg = str(info.value)
    assert "Did you mean Qwen/Qwen3-8B" in msg
    assert isinstance(info.value, SpecError)


def test_unknown_model_far_from_everything_lists_known_models():
    with pytest.raises(UnknownModelError) as info:
        get_model("zzzz")
    assert "Did you mean" not in str(info.value)
    assert "Qwen/Qwen3-8B" in str(info.value)  # the known list


def test_unknown_instance_type_suggests_a_close_one():
    with pytest.raises(SpecError) as info:
        get_instance_type("ecs.gn7i-8x.16xlarg")
    assert "Did you mean ecs.gn7i-8x.16xlarge" in str(info.value)


def test_unknown_gpu_kind_lists_known_kinds():
    with pytest.raises(SpecError) as info:
        get_gpu_kind("H100")
    assert "'H100'" in str(info.value) and "H20" in str(info.value)
