"""servenest/fit.py: will the model fit, checked before anything is created or paid for."""

from __future__ import annotations

import re

import pytest

from servenest import fit
from servenest.catalog import GIB, get_model
from servenest.errors import DoesNotFitError, SpecError
from servenest.fit import check_spec_fits, hardware_candidates, host_memory_gib

GIB_NUMBER = re.compile(r"\d+\.\d GiB")


def refusal(spec) -> str:
    with pytest.raises(DoesNotFitError) as info:
        check_spec_fits(spec)
    return str(info.value)


def ecs(make_spec, model, *instance_types, topology="ecs-single", nodes=1, **engine):
    return make_spec(
        "ecs", model=model, topology=topology,
        cloud={"instance_types": list(instance_types), "nodes": nodes}, engine=engine,
    )


# -- QwQ-32B, the seeds' A10 deployments ------------------------------------------------------
@pytest.mark.parametrize("itype, tp", [("ecs.gn7i-4x.8xlarge", 4), ("ecs.gn7i-8x.16xlarge", 8)])
def test_qwq_32b_fits_the_seed_a10_instances(make_spec, itype, tp):
    [report] = check_spec_fits(ecs(make_spec, "Qwen/QwQ-32B", itype))
    assert report.tensor_parallel_size == tp and report.pipeline_parallel_size == 1
    assert report.required_gib < report.usable_gib
    assert report.headroom_gib > 0
    # Checked per device: each A10 holds 1/TP of the weights.
    assert report.usable_gib == pytest.approx(24 * 0.9)
    assert report.weights_gib == pytest.approx(get_model("Qwen/QwQ-32B").weight_gib / tp)


def test_qwq_32b_on_one_a10_is_refused_with_numbers(make_spec):
    msg = refusal(ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-c8g1.2xlarge"))
    assert "does not fit" in msg
    assert "ecs.gn7i-c8g1.2xlarge" in msg
    assert len(GIB_NUMBER.findall(msg)) >= 3, msg  # weights, KV, usable...
    assert "21.6 GiB usable" in msg  # 1 x 24 GiB x 0.9


def test_fit_report_arithmetic(make_spec):
    spec = ecs(make_spec, "Qwen/Qwen3-32B", "ecs.ebmgn8v.48xlarge", max_model_len=8192)
    [r] = check_spec_fits(spec)
    info = get_model("Qwen/Qwen3-32B")
    # 8 KV heads over TP 8: one head per rank, so the node's KV splits 8 ways.
    assert r.kv_gib == pytest.approx(info.kv_bytes_per_token() * 8192 / GIB / 8)
    assert r.weights_gib == pytest.approx(info.weight_gib / 8)
    assert r.reserve_gib == pytest.approx(fit.GPU_RUNTIME_RESERVE_GIB)
    assert r.required_gib == pytest.approx(r.weights_gib + r.kv_gib + r.reserve_gib)
    assert "TP 8 x PP 1" in r.summary()


def test_gpu_memory_utilization_shrinks_usable_memory(make_spec):
    spec = ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-4x.8xlarge", gpu_memory_utilization=0.5)
    msg = refusal(spec)
    assert "12.0 GiB usable" in msg  # per A10: 24 GiB x 0.5


# -- seed minimum GPU memory ------------------------------------------------------------------
def test_qwen3_235b_on_8xa10_is_refused_citing_the_seed_minimum(make_spec):
    msg = refusal(ecs(make_spec, "Qwen/Qwen3-235B-A22B", "ecs.gn7i-8x.16xlarge", max_model_len=4096))
    assert "768 GiB" in msg and "seed" in msg
    assert "192 GiB" in msg  # what 8 x A10 has


def test_seed_minimum_refuses_even_when_the_arithmetic_fits(make_spec):
    facts = {
        "id": "acme/Small-1B", "params_b": 1.0, "weight_gb": 2.0, "weight_dtype": "bf16",
        "context_length": 4096, "num_layers": 16, "num_attention_heads": 16,
        "num_kv_heads": 4, "head_dim": 64, "min_gpu_memory_gib": 48,
    }
    spec = make_spec("ecs", model="acme/Small-1B", model_facts=facts,
                     cloud={"instance_types": ["ecs.gn7i-c8g1.2xlarge"]})
    msg = refusal(spec)
    assert "needs at least 48 GiB of GPU memory" in msg and "has 24 GiB" in msg
    assert "does not fit:" not in msg  # the arithmetic alone would pass


def test_seed_minimum_met_exactly_fits(make_spec):
    # Qwen3-14B: 48 GiB minimum = 2 x A10; 27.5 GiB of weights fit 43.2 GiB usable.
    assert check_spec_fits(ecs(make_spec, "Qwen/Qwen3-14B", "ecs.gn7i-2x.8xlarge", max_model_len=4096))
    # Qwen3-8B: 24 GiB minimum = 1 x A10.
    assert check_spec_fits(ecs(make_spec, "Qwen/Qwen3-8B", "ecs.gn7i-c8g1.2xlarge", max_model_len=4096))


# -- structural rules --------------------------------------------------------------------------
def test_tp_must_divide_attention_heads(make_spec):
    msg = refusal(ecs(make_spec, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "ecs.gn7i-8x.16xlarge"))
    assert "tensor parallel size 8" in msg and "28 attention heads" in msg


def test_distill_qwen_7b_fits_with_tp_4_on_4xa10(make_spec):
    spec = ecs(make_spec, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "ecs.gn7i-4x.8xlarge",
               tensor_parallel_size=4)
    [report] = check_spec_fits(spec)
    assert (report.tensor_parallel_size, report.pipeline_parallel_size) == (4, 1)


def test_tp_times_pp_must_match_the_devices(make_spec):
    msg = refusal(ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-8x.16xlarge", tensor_parallel_size=4))
    assert "TP 4 x PP 1 = 4 does not match the 8" in msg


def test_explicit_tp_and_pp_matching_the_devices_fit(make_spec):
    spec = ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-8x.16xlarge", tensor_parallel_size=4,
               pipeline_parallel_size=2)
    [report] = check_spec_fits(spec)
    assert (report.tensor_parallel_size, report.pipeline_parallel_size) == (4, 2)


# -- DeepSeek-R1 (MLA, FP8) on H20 -------------------------------------------------------------
def test_deepseek_r1_on_one_h20_instance_is_refused(make_spec):
    # vLLM keeps the whole MLA latent cache on every TP rank (one "KV head" per GPU), so
    # each of the 8 GPUs needs weights/8 (80.2 GiB) + the full 163840-token cache
    # (10.7 GiB) + runtime > 96 GiB x 0.9. vLLM refuses this at start-up; so must we.
    msg = refusal(ecs(make_spec, "deepseek-ai/DeepSeek-R1", "ecs.ebmgn8v.48xlarge"))
    assert "ecs.ebmgn8v.48xlarge" in msg


def test_deepseek_r1_on_two_h20_instances_fits_with_tp8_pp2(make_spec):
    spec = ecs(make_spec, "deepseek-ai/DeepSeek-R1", "ecs.ebmgn8v.48xlarge",
               topology="ecs-dual", nodes=2)
    [report] = check_spec_fits(spec)
    assert (report.tensor_parallel_size, report.pipeline_parallel_size) == (8, 2)
    assert report.usable_gib == pytest.approx(96 * 0.9)
    assert report.devices == 16


def test_deepseek_r1_on_one_h20_instance_fits_with_a_short_context(make_spec):
    # 32K tokens of MLA cache per GPU (2.1 GiB) leave room on 8 x 96 GiB.
    spec = ecs(make_spec, "deepseek-ai/DeepSeek-R1", "ecs.ebmgn8v.48xlarge", max_model_len=32768)
    [report] = check_spec_fits(spec)
    assert report.tensor_parallel_size == 8


# -- every candidate is checked ------------------------------------------------------------------
def test_a_too_small_second_candidate_is_refused(make_spec):
    spec = ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-8x.16xlarge", "ecs.gn7i-c8g1.2xlarge")
    msg = refusal(spec)
    assert "ecs.gn7i-c8g1.2xlarge" in msg
    assert len(hardware_candidates(spec)) == 2


def test_every_fitting_candidate_gets_a_report(make_spec):
    spec = ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-8x.16xlarge", "ecs.gn7i-4x.8xlarge")
    reports = check_spec_fits(spec)
    assert [r.tensor_parallel_size for r in reports] == [8, 4]


def test_unknown_instance_type_candidate_is_a_spec_error(make_spec):
    spec = ecs(make_spec, "Qwen/QwQ-32B", "ecs.gn7i-8x.16xlarg")
    with pytest.raises(SpecError, match="Did you mean ecs.gn7i-8x.16xlarge"):
        check_spec_fits(spec)


# -- ack -------------------------------------------------------------------------------------------
def test_ack_hardware_comes_from_gpu_kind(make_spec):
    spec = make_spec("ack")
    [report] = check_spec_fits(spec)
    assert report.usable_gib == pytest.approx(96 * 0.9)


def test_ack_with_unknown_gpu_kind_is_a_spec_error(make_spec):
    spec = make_spec("ack", cloud={"gpu_kind": "B300", "gpus_per_node": 8})
    with pytest.raises(SpecError, match="B300"):
        check_spec_fits(spec)


# -- local (CPU engine) ------------------------------------------------------------------------------
def test_host_memory_matches_proc_meminfo():
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert host_memory_gib() == pytest.approx(kib / 1024**2)


def test_local_tiny_fits_this_machine(make_spec):
    [report] = check_spec_fits(make_spec(engine={"max_model_len": 1024}))
    assert report.usable_gib == pytest.approx(host_memory_gib())
    assert report.kv_gib == 1  # the CPU engine reserves local.cpu_kvcache_gib up front
    assert report.reserve_gib == fit.CPU_RUNTIME_RESERVE_GIB


def test_local_qwen3_32b_is_refused_as_too_big_for_the_machines_ram(make_spec, monkeypatch):
    monkeypatch.setattr(fit, "host_memory_gib", lambda: 23.5)  # a 24 GB machine, whatever runs this
    spec = make_spec(model="Qwen/Qwen3-32B", weights={"source": "modelscope"},
                     engine={"max_model_len": 1024})
    msg = refusal(spec)
    assert "this machine (CPU engine)" in msg
    assert "does not fit" in msg and "23.5 GiB usable" in msg


def test_cpu_kv_space_too_small_for_the_sequences_is_refused(make_spec):
    # tiny-qwen2: 2 x 2 layers x 1 KV head x 64 x 2 bytes = 512 B/token; 2048 tokens = 1 MiB
    spec = make_spec(engine={"max_model_len": 2048, "min_kv_sequences": 2048}, local={"cpu_kvcache_gib": 1})
    msg = refusal(spec)
    assert "local.cpu_kvcache_gib is 1" in msg
    assert "2048 sequence(s) of 2048 tokens" in msg
    # ...and a bigger reservation makes the same spec fit.
    assert check_spec_fits(spec.model_copy(update={"local": spec.local.model_copy(update={"cpu_kvcache_gib": 3})}))
