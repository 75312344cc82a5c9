"""servenest/engines/__init__.py: what each engine is told (its flags), never the key."""

from __future__ import annotations

import pytest

from servenest.engines import ADAPTERS, SGLANG, VLLM, adapter_for


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def no_key_anywhere(args: list[str]) -> None:
    for arg in args:
        assert not arg.replace("_", "-").startswith("--api-key"), args


def vllm_args(spec, accelerator="CPU", tp=1, pp=1, host="127.0.0.1", port=8000, path="/models/tiny"):
    return VLLM.server_args(spec, path, host, port, tp, pp, accelerator)


def test_vllm_args_for_the_cpu_engine(make_spec):
    spec = make_spec(engine={"served_model_name": "tiny", "max_model_len": 1024, "dtype": "bfloat16"})
    args = vllm_args(spec)
    assert flag(args, "--model") == "/models/tiny"
    assert flag(args, "--served-model-name") == "tiny"
    assert flag(args, "--host") == "127.0.0.1"
    assert flag(args, "--port") == "8000"
    assert flag(args, "--max-model-len") == "1024"
    assert flag(args, "--dtype") == "bfloat16"
    assert "--enable-chunked-prefill" in args
    assert "--gpu-memory-utilization" not in args  # the CPU engine sizes KV by VLLM_CPU_KVCACHE_SPACE
    assert "--tensor-parallel-size" not in args and "--pipeline-parallel-size" not in args
    no_key_anywhere(args)


def test_vllm_args_default_served_name_and_length_come_from_the_model(make_spec):
    spec = make_spec("ecs")
    args = vllm_args(spec, accelerator="A10", tp=8)
    assert flag(args, "--served-model-name") == "Qwen/QwQ-32B"
    assert flag(args, "--max-model-len") == str(spec.model_info.context_length)


def test_vllm_args_on_gpus(make_spec):
    spec = make_spec("ecs", engine={"gpu_memory_utilization": 0.85})
    args = vllm_args(spec, accelerator="A10", tp=4, pp=2, host="0.0.0.0", port=9000)
    assert flag(args, "--gpu-memory-utilization") == "0.85"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--pipeline-parallel-size") == "2"
    assert flag(args, "--host") == "0.0.0.0" and flag(args, "--port") == "9000"
    no_key_anywhere(args)


@pytest.mark.parametrize("tp, pp, expected", [(1, 1, set()), (2, 1, {"--tensor-parallel-size"}),
                                              (1, 2, {"--pipeline-parallel-size"})])
def test_vllm_parallel_flags_only_when_above_one(make_spec, tp, pp, expected):
    args = vllm_args(make_spec("ecs"), accelerator="H20", tp=tp, pp=pp)
    assert {a for a in args if a.endswith("-parallel-size")} == expected


def test_vllm_chunked_prefill_can_be_disabled(make_spec):
    args = vllm_args(make_spec(engine={"enable_chunked_prefill": False}))
    assert "--no-enable-chunked-prefill" in args and "--enable-chunked-prefill" not in args


def test_extra_args_come_last(make_spec):
    extra = ["--enforce-eager", "--seed", "7", "--max-num-seqs=4"]
    spec = make_spec(engine={"extra_args": extra})
    for adapter in (VLLM, SGLANG):
        args = adapter.server_args(spec, "/m", "127.0.0.1", 8000, 1, 1, "A10")
        assert args[-len(extra):] == extra
        no_key_anywhere(args)


def test_sglang_args(make_spec):
    spec = make_spec("ecs", engine={"kind": "sglang", "max_model_len": 8192,
                                    "gpu_memory_utilization": 0.8})
    args = SGLANG.server_args(spec, "/models/qwq", "0.0.0.0", 30000, 8, 1, "A10")
    assert flag(args, "--model-path") == "/models/qwq"
    assert flag(args, "--tp") == "8"
    assert flag(args, "--context-length") == "8192"
    assert flag(args, "--mem-fraction-static") == "0.8"
    assert flag(args, "--served-model-name") == "Qwen/QwQ-32B"
    assert flag(args, "--port") == "30000"
    assert "--enable-metrics" in args  # the gate's /metrics stage needs it
    assert "--model" not in args and "--max-model-len" not in args
    assert "--dtype" not in args  # "auto" is the engine's own default
    no_key_anywhere(args)


def test_adapters_and_their_key_variables(make_spec):
    assert adapter_for(make_spec()) is VLLM
    assert adapter_for(make_spec("ecs", engine={"kind": "sglang"})) is SGLANG
    assert set(ADAPTERS) == {"vllm", "sglang"}
    assert VLLM.key_env == "VLLM_API_KEY"
    assert VLLM.module == "vllm.entrypoints.openai.api_server"
    assert (VLLM.running_metric, VLLM.waiting_metric) == (
        "vllm:num_requests_running", "vllm:num_requests_waiting")
