"""The deployment spec: one validated description of a model service.

Specs live as YAML files in ``deployments/`` and arrive as Prefect deployment
parameters; both paths go through ``DeploymentSpec.model_validate`` and so fail the
same way, before anything is created or paid for.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servenest.catalog import BUILTIN_MODEL, ModelInfo, get_model
from servenest.errors import SpecError

Topology = Literal["local", "ecs-single", "ecs-dual", "ack"]
EngineKind = Literal["vllm", "sglang"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")

# Flags ServeNest sets itself from the spec; passing them in extra_args would either
# conflict with what the pipeline relies on or (``--api-key``) put a secret on a
# command line, where ``ps`` and the run logs would show it.
_MANAGED_FLAGS = {
    "--model": "the spec's model and weights",
    "--model-path": "the spec's model and weights",
    "--served-model-name": "engine.served_model_name",
    "--host": "access.public",
    "--port": "access.port",
    "--api-key": "access.api_key_secret (the key reaches the engine through its environment)",
    "--tensor-parallel-size": "engine.tensor_parallel_size",
    "-tp": "engine.tensor_parallel_size",
    "--tp": "engine.tensor_parallel_size",
    "--pipeline-parallel-size": "engine.pipeline_parallel_size",
    "-pp": "engine.pipeline_parallel_size",
    "--max-model-len": "engine.max_model_len",
    "--context-length": "engine.max_model_len",
    "--gpu-memory-utilization": "engine.gpu_memory_utilization",
    "--mem-fraction-static": "engine.gpu_memory_utilization",
}
# Spec files are committed and arrive as Prefect parameters: no credential belongs in them.
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIAL)", re.I)


def _abbreviation_of(flag: str) -> str | None:
    """argparse (and so vLLM) accepts unique prefixes: --api-k means --api-key."""
    if not flag.startswith("--") or len(flag) < 5:
        return None
    hits = [use for full, use in _MANAGED_FLAGS.items() if full.startswith(flag)]
    return hits[0] if hits else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSpec(_Strict):
    kind: EngineKind = Field("vllm", description="Serving engine.")
    served_model_name: str | None = Field(
        None, description="Name clients send as `model`; defaults to the model id."
    )
    max_model_len: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Context length; defaults to the model's."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of accelerator memory the engine may use."
    )
    tensor_parallel_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Defaults to the accelerators per node."
    )
    pipeline_parallel_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Defaults to the number of nodes."
    )
    enable_chunked_prefill: bool = True
    dtype: str = Field("auto", description="Weight dtype passed to the engine.")
    min_kv_sequences: int = Field(
        1, gt=0, description="Full-length sequences the KV cache must hold (fit check)."
    )
    extra_args: list[str] = Field(default_factory=list, description="More engine flags.")
    env: dict[str, str] = Field(default_factory=dict, description="More engine environment.")
    image: str | None = Field(None, description="Container image on cloud hosts.")
    version: str | None = Field(None, description="Engine version on cloud hosts.")

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: list[str]) -> list[str]:
        for arg in args:
            flag = arg.split("=", 1)[0]
            # vLLM's parser accepts --api_key as --api-key; so must this check.
            if flag.startswith("--"):
                flag = "--" + flag[2:].replace("_", "-")
            managed = _MANAGED_FLAGS.get(flag) or _abbreviation_of(flag)
            if managed:
                raise ValueError(f"{flag} is set by ServeNest; use {managed} instead")
        return args

    @field_validator("env")
    @classmethod
    def _no_secret_env(cls, env: dict[str, str]) -> dict[str, str]:
        leaked = sorted(k for k in env if _SECRET_ENV.search(k))
        if leaked:
            raise ValueError(f"{', '.join(leaked)} must not be set in clear; keys come from Secret blocks")
        return env


def check_oss_uri(uri: str) -> str:
    """oss://bucket/prefix with a bucket name OSS accepts (3-63 lowercase letters, digits and
    hyphens, starting and ending with a letter or digit)."""
    m = re.match(r"^oss://([^/]*)(/.*)?$", uri)
    if not m:
        raise ValueError(f"weights.oss_uri {uri!r} must look like oss://bucket-name/prefix")
    bucket = m.group(1)
    if not re.match(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", bucket):
        raise ValueError(
            f"{bucket!r} is not a bucket name OSS accepts: 3-63 characters of lowercase letters, "
            f"digits and hyphens, starting and ending with a letter or digit")
    if "//" in (m.group(2) or ""):
        raise ValueError(f"weights.oss_uri {uri!r} has an empty path segment")
    return uri


class WeightsSpec(_Strict):
    source: Literal["builtin", "local", "modelscope", "huggingface", "oss"] = Field(
        "modelscope", description="Where the weights come from."
    )
    path: str | None = Field(None, description="Directory, for source=local.")
    repo_id: str | None = Field(None, description="Hub repository; defaults to the model id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    oss_uri: str | None = Field(None, description="oss://bucket/prefix, for source=oss.")
    verify: Literal["quick", "full"] = Field(
        "quick", description="quick: sizes against the manifest; full: sha256 of every file."
    )
    cache: Literal["none", "snapshot"] = Field(
        "none", description="ECS: keep the weights on their own data disk and, after the first "
        "verified staging, a snapshot of it that later provisions of the model start from.")
    max_staging_hours: float = Field(
        4.0, gt=0, description="Refuse (before any spend) a spec whose cold staging on cloud "
        "hosts would take longer than this (servenest/time_to_ready.py).")

    @model_validator(mode="after")
    def _source_fields(self) -> WeightsSpec:
        if self.source == "local" and not self.path:
            raise ValueError("weights.path is required when weights.source is 'local'")
        if self.source == "oss" and not self.oss_uri:
            raise ValueError("weights.oss_uri is required when weights.source is 'oss'")
        if self.oss_uri is not None:
            check_oss_uri(self.oss_uri)
        return self


class AccessSpec(_Strict):
    api_key_secret: str = Field(
        ..., description="Name of the Prefect Secret block that holds the API key."
    )
    public: bool = Field(False, description="Expose the endpoint beyond the private network.")
    allowed_cidrs: list[str] = Field(
        default_factory=list, description="Source CIDRs allowed to reach the endpoint."
    )
    port: int = Field(8000, ge=1024, le=65535, description="Port the endpoint listens on.")

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        out = []
        for cidr in cidrs:
            try:
                out.append(str(ipaddress.ip_network(cidr, strict=True)))
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a valid CIDR ({exc})") from None
        return out

    @model_validator(mode="after")
    def _public_needs_cidrs(self) -> AccessSpec:
        if self.public and not self.allowed_cidrs:
            raise ValueError(
                "access.public needs access.allowed_cidrs; write 0.0.0.0/0 explicitly "
                "to open the endpoint to the whole internet"
            )
        return self


class CloudSpec(_Strict):
    region: str = Field("cn-hangzhou", description="Alibaba Cloud region id.")
    zones: list[str] = Field(default_factory=list, description="Candidate zones, in order.")
    instance_types: list[str] = Field(
        default_factory=list, description="Candidate ECS instance types, in order."
    )
    nodes: int = Field(1, ge=1, le=16, description="Instances or pod groups in one replica.")
    gpu_kind: str | None = Field(None, description="ACK/ACS GPU kind (A10, H20, PPU...).")
    gpus_per_node: int | None = Field(None, ge=1, le=16, description="ACK/ACS GPUs per pod.")
    image: str | None = Field(None, description="ECS image id or family.")
    image_prepared: bool = Field(
        False, description="cloud.image already carries the NVIDIA driver, docker and "
        "nvidia-container-toolkit (a custom image): the host bootstrap only checks them.")
    system_disk_gb: int = Field(200, ge=20, le=32768, description="System disk size.")
    disk_category: str = Field("cloud_essd", description="ECS disk category.")
    bandwidth_mbps: int = Field(0, ge=0, le=1000, description="Public bandwidth; 0 = none.")
    credentials_block: str = Field(
        "default", description="AlibabaCloudCredentials block name."
    )
    cluster_id: str | None = Field(
        None, description="Existing ACK/ACS cluster id; unset: a cluster is created through ROS.")
    namespace: str = Field("llm-model", description="ACK/ACS namespace of the deployment's objects.")
    vpc_id: str | None = None
    vswitch_id: str | None = None
    security_group_id: str | None = None
    hourly_budget: float | None = Field(
        None, gt=0, description="Refuse to create anything whose estimated hourly price (in the "
        "account's price-list currency, CNY in mainland regions) is above this.")
    require_approval: bool = Field(
        False, description="Pause before creating anything until a person approves the price.")
    approval_timeout_s: int = Field(3600, ge=60, le=7 * 86400, description="How long to wait for approval.")

    @field_validator("region")
    @classmethod
    def _region(cls, region: str) -> str:
        if not re.match(r"^[a-z]{2}(-[a-z0-9]+)+$", region):
            raise ValueError(f"{region!r} is not an Alibaba Cloud region id (like cn-hangzhou)")
        return region

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str) -> str:
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
            raise ValueError(f"{namespace!r} is not a Kubernetes namespace name (DNS label)")
        return namespace

    @field_validator("cluster_id")
    @classmethod
    def _cluster_id(cls, cluster_id: str | None) -> str | None:
        if cluster_id is not None and not re.match(r"^[a-z0-9]{8,64}$", cluster_id):
            raise ValueError(f"{cluster_id!r} is not an ACK/ACS cluster id (like c3f2a9...)")
        return cluster_id

    @model_validator(mode="after")
    def _zones_in_region(self) -> CloudSpec:
        for zone in self.zones:
            if not re.match(rf"^{re.escape(self.region)}-[a-z0-9]+$", zone):
                raise ValueError(f"zone {zone!r} is not a zone of region {self.region} (like {self.region}-i)")
        return self


class LocalSpec(_Strict):
    engine_python: str | None = Field(
        None,
        description="Python that has the engine installed (a CUDA host's own vLLM); "
        "default: the managed CPU environment.",
    )
    cpu_kvcache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU engine.")
    stop_grace_s: float = Field(15.0, gt=0, description="TERM-to-KILL grace period at teardown.")


class HealthSpec(_Strict):
    deadline_s: float | None = Field(
        None, gt=0, description="Whole-gate deadline; default scales with the weight size."
    )
    poll_interval_s: float = Field(0.1, gt=0, le=10, description="Readiness poll interval.")
    prompt: str = Field("Say hello in one word.", description="Prompt of the gate's completion.")
    max_tokens: int = Field(8, ge=1, le=256, description="Tokens the gate asks for.")


class WatchSpec(_Strict):
    """The scheduled watch of a registered endpoint (flows/watch.py)."""

    schedule: bool | None = Field(
        None, description="Run watch/<name> on a schedule; default: on, except on the local topology.")
    every_minutes: int = Field(5, ge=1, le=1440, description="Minutes between two watch passes.")
    timeout_s: float = Field(20.0, gt=0, le=300, description="Time budget of one pass, all checks together.")
    max_latency_ms: float = Field(
        10_000.0, gt=0, description="A 1-token streamed completion slower than this is degraded.")
    max_waiting: int = Field(
        32, ge=0, description="More requests waiting in the engine's queue than this is degraded.")
    max_kv_cache_usage: float = Field(
        0.95, gt=0, le=1, description="KV-cache use above this fraction is degraded.")

    def scheduled(self, topology: str) -> bool:
        return self.schedule if self.schedule is not None else topology != "local"


class HealSpec(_Strict):
    """What heal/<name> may do when the watch finds the endpoint down (flows/heal.py)."""

    max_reprovisions_per_day: int = Field(
        2, ge=0, le=24, description="Reprovisions allowed per 24 h; beyond that the deployment is marked failed.")
    on_give_up: Literal["keep", "teardown"] = Field(
        "keep", description="What happens to the broken deployment once heal gives up.")


class BenchmarkSpec(_Strict):
    enabled: bool = Field(False, description="Run the benchmark as provision's last gate.")
    # The short load check of provision and the demo.
    requests: int = Field(16, ge=1, description="Requests in the load check.")
    concurrency: int = Field(4, ge=1, description="Concurrent requests in the load check.")
    max_tokens: int = Field(16, ge=1, description="Output tokens per load-check request.")
    # The benchmark, with `vllm bench serve`'s names.
    backend: Literal["openai", "vllm", "openai-chat"] = "openai"
    dataset_name: Literal["sharegpt", "random", "custom"] = "random"
    dataset_path: str | None = Field(None, description="ShareGPT JSON or custom JSONL file.")
    num_prompts: int = Field(200, ge=1)
    request_rate: float | None = Field(None, gt=0, description="Requests/s; unset sends all at once (inf).")
    burstiness: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    random_input_len: int = Field(256, ge=1)
    random_output_len: int = Field(64, ge=1)
    sharegpt_output_len: int | None = Field(None, ge=1)
    ignore_eos: bool = False
    temperature: float | None = Field(0.0, ge=0, description="Sent when set; 0 is greedy.")
    seed: int = 0
    tokenizer: str | None = Field(None, description="Tokenizer directory; default: the staged weights.")
    max_send_lag_ms: float = Field(
        10.0, gt=0, description="Send lag p99 above this marks the run invalid (client fell behind)."
    )
    # Gate and trend.
    slo_p99_ttft_ms: float | None = Field(None, gt=0)
    slo_p99_tpot_ms: float | None = Field(None, gt=0)
    min_goodput_rps: float | None = Field(None, gt=0)
    min_output_throughput: float | None = Field(None, gt=0)
    regression_margin: float = Field(0.2, gt=0, description="Worse than the recent median by this much is a regression.")
    fail_on_regression: bool = False
    hourly_price_usd: float | None = Field(None, gt=0, description="Price of the hardware, for $/M tokens.")

    @model_validator(mode="after")
    def _dataset(self) -> BenchmarkSpec:
        if self.dataset_name != "random" and not self.dataset_path:
            raise ValueError(f"benchmark.dataset_name {self.dataset_name} needs benchmark.dataset_path")
        return self


class ReplicasSpec(_Strict):
    min: int = Field(1, ge=1, le=64, description="Replicas (pods, or LeaderWorkerSet groups) kept running.")
    max: int = Field(1, ge=1, le=64, description="Replicas the autoscaler may add up to (ack only).")

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasSpec:
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class AutoscalingSpec(_Strict):
    """How an ack deployment scales between replicas.min and replicas.max (ACK's guide
    "Configure auto scaling for standalone or distributed LLM inference services")."""

    autoscaler: Literal["hpa", "keda", "auto"] = Field(
        "auto", description="hpa: PodMonitor -> ack-alibaba-cloud-metrics-adapter -> HPA on Pods "
        "metrics; keda: a KEDA ScaledObject querying Prometheus; auto: KEDA where the cluster has it "
        "and prometheus_url is set, else hpa.")
    targets: dict[str, Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Engine metric -> target average per pod; must include the engine's queue "
        "depth (vllm:num_requests_waiting); KV-cache use (0-1: vllm:kv_cache_usage_perc from vLLM 0.9, "
        "vllm:gpu_cache_usage_perc before, as in the default image) is optional. Default: queue depth 5.")
    prometheus_url: str | None = Field(
        None, description="Prometheus HTTP API KEDA queries (Managed Service for Prometheus' endpoint).")
    scale_down_window_s: int = Field(
        300, ge=0, le=3600, description="Scale-down stabilization: a new replica costs a model load.")

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"autoscaling.prometheus_url {url!r} must be an http(s) URL")
        return url


# The per-pod gauges each engine's /metrics exposes: what autoscaling may target
# (servenest.engines' adapters take their metric names from here).
ENGINE_GAUGES: dict[str, dict[str, str]] = {
    "vllm": {"waiting": "vllm:num_requests_waiting", "running": "vllm:num_requests_running",
             "kv_usage": "vllm:kv_cache_usage_perc"},
    "sglang": {"waiting": "sglang:num_queue_reqs", "running": "sglang:num_running_reqs",
               "kv_usage": "sglang:token_usage"},
}
# vLLM's KV-cache gauge was vllm:gpu_cache_usage_perc until 0.9 renamed it (vllm-project/vllm
# #18354); 0.12 removed the old name (#29330).
VLLM_OLD_KV_GAUGE = "vllm:gpu_cache_usage_perc"
DEFAULT_VLLM_IMAGE_VERSION = "0.7.2"  # the tag of servenest.cloud.scripts.DEFAULT_IMAGES["vllm"]
DEFAULT_QUEUE_TARGET = 5.0  # waiting requests per pod before another replica is worth a model load


class DeploymentSpec(_Strict):
    name: str = Field(..., description="Deployment name: lowercase letters, digits, dashes.")
    model: str = Field(..., description="Catalog model id, e.g. Qwen/Qwen3-8B.")
    model_facts: ModelInfo | None = Field(
        None, description="Architecture facts for a model outside the catalog."
    )
    topology: Topology = "local"
    engine: EngineSpec = Field(default_factory=EngineSpec)
    weights: WeightsSpec = Field(default_factory=WeightsSpec)
    access: AccessSpec
    cloud: CloudSpec = Field(default_factory=CloudSpec)
    local: LocalSpec = Field(default_factory=LocalSpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    watch: WatchSpec = Field(default_factory=WatchSpec)
    heal: HealSpec = Field(default_factory=HealSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                "must be 1-40 lowercase letters, digits or dashes, starting and ending "
                "with a letter or digit"
            )
        return name

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        if self.model_facts is None:
            try:
                get_model(self.model)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        elif self.model_facts.id != self.model:
            raise ValueError("model_facts.id must equal model")
        if self.weights.source == "builtin" and self.model != BUILTIN_MODEL:
            raise ValueError(f"weights.source 'builtin' only provides {BUILTIN_MODEL}")
        if self.model == BUILTIN_MODEL and self.weights.source != "builtin":
            raise ValueError(f"{BUILTIN_MODEL} is generated locally; set weights.source: builtin")
        if self.topology == "local" and self.engine.kind != "vllm":
            raise ValueError("the local topology runs vLLM; SGLang runs on the cloud topologies")
        if self.topology == "local" and self.weights.source == "oss":
            raise ValueError("the local topology stages from builtin, local, modelscope or huggingface")
        if self.topology != "local" and self.weights.source in ("builtin", "local"):
            raise ValueError(
                f"topology {self.topology} runs on cloud hosts; weights.source must be "
                "modelscope, huggingface or oss"
            )
        if self.topology in ("ecs-single", "ecs-dual") and self.weights.source != "modelscope":
            raise ValueError(
                f"topology {self.topology} stages weights from ModelScope (weights.source: "
                "modelscope); OSS staging on ECS hosts is not in this version")
        if self.topology in ("ecs-single", "ecs-dual") and not self.cloud.instance_types:
            raise ValueError(f"topology {self.topology} needs cloud.instance_types")
        if self.topology == "ecs-dual" and self.cloud.nodes != 2:
            raise ValueError("topology ecs-dual runs on exactly 2 instances (cloud.nodes: 2)")
        if self.topology == "ecs-single" and self.cloud.nodes != 1:
            raise ValueError("topology ecs-single runs on 1 instance (cloud.nodes: 1)")
        if self.topology == "ack":
            self._check_ack()
        self._check_scaling()
        if self.engine.max_model_len and self.engine.max_model_len > self.model_info.context_length:
            raise ValueError(
                f"engine.max_model_len {self.engine.max_model_len} exceeds {self.model}'s "
                f"context length {self.model_info.context_length}"
            )
        return self

    def _check_ack(self) -> None:
        # Services, LeaderWorkerSets and Fluid's objects want DNS-1035 names, and Fluid
        # derives Helm releases (53 characters) from the DataLoad name <name>-weights-<tag>.
        if not re.match(r"^[a-z][a-z0-9-]{0,23}$", self.name):
            raise ValueError("topology ack needs a name of at most 24 characters starting with a "
                             "letter (Kubernetes and Fluid derive longer names from it)")
        if self.access.public and self.access.allowed_cidrs != ["0.0.0.0/0"]:
            raise ValueError(
                "topology ack's internet load balancer (a CLB) cannot filter clients by "
                "access.allowed_cidrs; set allowed_cidrs: [0.0.0.0/0] to open it (the API key "
                "still guards it), or keep access private and reach it from the VPC")
        if not (self.cloud.gpu_kind and self.cloud.gpus_per_node):
            raise ValueError("topology ack needs cloud.gpu_kind and cloud.gpus_per_node")
        if self.weights.source not in ("modelscope", "oss"):
            raise ValueError("topology ack stages weights from ModelScope into OSS, or reads them "
                             "from OSS (weights.source: modelscope or oss)")
        if not self.weights.oss_uri:
            raise ValueError("topology ack keeps the weights on OSS: set weights.oss_uri "
                             "(oss://bucket/prefix; with source modelscope, where they are synced)")
        if not self.cloud.cluster_id and not (self.cloud.instance_types and self.cloud.zones):
            raise ValueError("topology ack needs cloud.cluster_id (an existing cluster), or "
                             "cloud.instance_types and cloud.zones for the GPU node pool of a new one")

    def _check_scaling(self) -> None:
        if self.replicas.max > 1 and self.topology != "ack":
            raise ValueError(f"replicas.max > 1 autoscales pods on topology ack; topology {self.topology} "
                             "runs one copy (set replicas.max: 1)")
        if self.replicas.min == self.replicas.max:
            return
        gauges = ENGINE_GAUGES[self.engine.kind]
        exposed, engine = [gauges["waiting"], gauges["running"], gauges["kv_usage"]], self.engine.kind
        version = self.vllm_version if engine == "vllm" else None
        if version is not None:
            engine = f"vLLM {'.'.join(map(str, version))}"
            exposed = exposed[:2] + ([gauges["kv_usage"]] if version >= (0, 9) else []) \
                + ([VLLM_OLD_KV_GAUGE] if version < (0, 12) else [])
        elif self.engine.kind == "vllm":
            exposed.append(VLLM_OLD_KV_GAUGE)  # a version we cannot tell: either name may be there
        for name, target in self.scale_targets.items():
            if name not in exposed:
                raise ValueError(f"autoscaling.targets: {engine} does not expose a per-pod "
                                 f"gauge {name!r}; it exposes {', '.join(exposed)}")
            if name in (gauges["kv_usage"], VLLM_OLD_KV_GAUGE) and target > 1:
                raise ValueError(f"autoscaling.targets: {name} is a fraction (0-1); {target} can never be reached")
        if gauges["waiting"] not in self.scale_targets:
            raise ValueError(f"autoscaling.targets must include the queue depth {gauges['waiting']} "
                             "(waiting requests per pod)")
        if self.autoscaling.autoscaler == "keda" and not self.autoscaling.prometheus_url:
            raise ValueError("autoscaling.autoscaler keda queries Prometheus: set autoscaling.prometheus_url "
                             "(the Managed Service for Prometheus HTTP API endpoint)")

    # -- derived values ---------------------------------------------------------------
    @property
    def model_info(self) -> ModelInfo:
        return self.model_facts or get_model(self.model)

    @property
    def served_model_name(self) -> str:
        return self.engine.served_model_name or self.model

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len or self.model_info.context_length

    @property
    def vllm_version(self) -> tuple[int, int] | None:
        """(major, minor) of the vLLM a cloud pod runs: engine.version (installed over the
        image), else the image's tag, else the default image's; None when it cannot be told."""
        text = self.engine.version
        if text is None and self.engine.image is None:
            text = DEFAULT_VLLM_IMAGE_VERSION
        elif text is None and "vllm" in self.engine.image.rsplit("/", 1)[-1].split(":")[0]:
            text = self.engine.image.rsplit(":", 1)[-1]
        found = re.match(r"^v?(\d+)\.(\d+)", text or "")
        return (int(found.group(1)), int(found.group(2))) if found else None

    @property
    def autoscaled(self) -> bool:
        return self.replicas.max > self.replicas.min

    @property
    def scale_targets(self) -> dict[str, float]:
        """Metric -> target average per pod (the engine's queue depth by default)."""
        if self.autoscaling.targets is not None:
            return dict(self.autoscaling.targets)
        return {ENGINE_GAUGES[self.engine.kind]["waiting"]: DEFAULT_QUEUE_TARGET}

    @property
    def weights_repo(self) -> str:
        info = self.model_info
        if self.weights.repo_id:
            return self.weights.repo_id
        if self.weights.source == "huggingface":
            return info.huggingface_id or self.model
        return info.modelscope_id or self.model

    def with_engine(self, **changes: Any) -> DeploymentSpec:
        """A copy with engine fields changed, validated like a fresh spec."""
        return self.with_section("engine", **changes)

    def with_section(self, section: str, **changes: Any) -> DeploymentSpec:
        """A copy with fields of one section (engine, weights, ...) changed, validated."""
        data = self.model_dump(mode="json")
        data[section].update(changes)
        return load_spec_data(data)


def load_spec_data(data: Any, *, origin: str = "spec") -> DeploymentSpec:
    if isinstance(data, DeploymentSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping of spec fields, got {type(data).__name__}")
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{origin} is invalid:\n{format_validation_error(exc)}") from None


def load_spec_file(path: str | Path) -> DeploymentSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from None
    return load_spec_data(data, origin=str(path))


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(spec)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)
