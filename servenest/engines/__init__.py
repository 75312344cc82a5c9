"""What differs between serving engines: their flags, their launch module and metric names.

Topologies decide *where* an engine runs (a local process, a docker container, a pod);
an adapter decides *what* it is told. The API key is never a flag: it reaches the
engine through its environment (``VLLM_API_KEY`` for vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass

from servenest.spec import ENGINE_GAUGES, DeploymentSpec


@dataclass(frozen=True)
class EngineAdapter:
    kind: str
    module: str
    key_env: str
    running_metric: str
    waiting_metric: str
    kv_usage_metric: str

    def server_args(
        self, spec: DeploymentSpec, model_path: str, host: str, port: int,
        tensor_parallel_size: int, pipeline_parallel_size: int, accelerator: str,
    ) -> list[str]:
        e = spec.engine
        if self.kind == "vllm":
            args = [
                "--model", model_path, "--served-model-name", spec.served_model_name,
                "--host", host, "--port", str(port), "--max-model-len", str(spec.max_model_len),
                "--dtype", e.dtype,
            ]
            if accelerator != "CPU":
                args += ["--gpu-memory-utilization", str(e.gpu_memory_utilization)]
            if tensor_parallel_size > 1:
                args += ["--tensor-parallel-size", str(tensor_parallel_size)]
            if pipeline_parallel_size > 1:
                args += ["--pipeline-parallel-size", str(pipeline_parallel_size)]
            args.append("--enable-chunked-prefill" if e.enable_chunked_prefill else "--no-enable-chunked-prefill")
        else:
            args = [
                "--model-path", model_path, "--served-model-name", spec.served_model_name,
                "--host", host, "--port", str(port), "--context-length", str(spec.max_model_len),
                "--tp", str(tensor_parallel_size), "--mem-fraction-static", str(e.gpu_memory_utilization),
                "--enable-metrics",
            ]
            if e.dtype != "auto":
                args += ["--dtype", e.dtype]
        return args + list(e.extra_args)


VLLM = EngineAdapter(
    kind="vllm",
    module="vllm.entrypoints.openai.api_server",
    key_env="VLLM_API_KEY",
    running_metric=ENGINE_GAUGES["vllm"]["running"],
    waiting_metric=ENGINE_GAUGES["vllm"]["waiting"],
    kv_usage_metric=ENGINE_GAUGES["vllm"]["kv_usage"],
)
SGLANG = EngineAdapter(
    kind="sglang",
    module="sglang.launch_server",
    # sglang.launch_server reads --api-key only: the container's start script reads the key
    # from a root-only file mounted read-only and passes it from this variable, so it never
    # appears in templates, `docker inspect` or ServeNest's logs.
    key_env="SGLANG_API_KEY",
    running_metric=ENGINE_GAUGES["sglang"]["running"],
    waiting_metric=ENGINE_GAUGES["sglang"]["waiting"],
    kv_usage_metric=ENGINE_GAUGES["sglang"]["kv_usage"],
)

ADAPTERS = {"vllm": VLLM, "sglang": SGLANG}


def adapter_for(spec: DeploymentSpec) -> EngineAdapter:
    return ADAPTERS[spec.engine.kind]
