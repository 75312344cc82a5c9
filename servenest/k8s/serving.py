"""Kubernetes objects of an ack deployment besides Fluid's: namespace, Secrets, the weights
sync Job, the engine workload (Deployment or LeaderWorkerSet) and its Services (seed 003).

Pure functions of the spec; :mod:`servenest.topology.ack` applies them in order.

- The weights live on OSS (``weights.oss_uri``) and reach pods through the Fluid Dataset's
  PVC, mounted read-only at ``/llm-model`` as in the seed's benchmark Deployment.
- A model that fits one pod runs as a Deployment (TP = GPUs per pod; ``replicas.min`` pods,
  more as :mod:`servenest.k8s.autoscaling` scales it); more pods per replica
  (``cloud.nodes`` > 1, DeepSeek-R1/V3 671B) run as LeaderWorkerSet groups: the leader
  starts the Ray head and the engine with TP x PP, workers join its Ray cluster (vLLM's
  ``docs/deployment/frameworks/lws.md``).
- GPU pods carry ACS's GPU labels (``alibabacloud.com/compute-class: gpu`` and
  ``alibabacloud.com/gpu-model-series: <cloud.gpu_kind>``); on ACK node pools, launch adds a
  node affinity to the GPU models (``aliyun.accelerator/nvidia_name``) preflight found.
- The API key and the OSS key only ever exist in Secrets; pods read them through
  ``secretKeyRef``. :func:`redacted` blanks Secret data for ``servenest plan``.
"""

from __future__ import annotations

import base64
import math
import shlex

from servenest.cloud import scripts
from servenest.engines import adapter_for
from servenest.fit import hardware_candidates, parallelism
from servenest.health import default_deadline_s
from servenest.k8s.client import DEPLOYMENT_LABEL
from servenest.k8s.fluid import (
    dataset_name,
    oss_endpoint,
    oss_secret_name,
    owned_labels,
    revision_tag,
)
from servenest.spec import DeploymentSpec

MODEL_MOUNT = "/llm-model"
COMPONENT_LABEL = "servenest/component"  # engine | weights-sync
ROLE_LABEL = "servenest/role"
SERVING_ROLE = "serving"  # the pod that answers HTTP: the single pod, or the LWS leader
GPU_RESOURCE = "nvidia.com/gpu"
ACS_COMPUTE_CLASS = "alibabacloud.com/compute-class"
ACS_GPU_MODEL = "alibabacloud.com/gpu-model-series"
ACK_GPU_NAME_LABEL = "aliyun.accelerator/nvidia_name"  # on the GPU nodes of ACK node pools
LB_ADDRESS_TYPE = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type"
LB_IP_VERSION = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-ip-version"
API_KEY_FIELD = "api-key"
OSSUTIL_URL = "https://gosspublic.alicdn.com/ossutil/v2/2.1.0/ossutil-2.1.0-linux-amd64.zip"
PROBE_PERIOD_S = 10
CPU_PER_GPU, MEMORY_GIB_PER_GPU = 8, 64
q = shlex.quote


def namespace_of(spec: DeploymentSpec) -> str:
    return spec.cloud.namespace


def workload_name(spec: DeploymentSpec) -> str:
    return spec.name


def workload_kind(spec: DeploymentSpec) -> str:
    return "LeaderWorkerSet" if spec.cloud.nodes > 1 else "Deployment"


def api_key_secret_name(spec: DeploymentSpec) -> str:
    return f"{spec.name}-api-key"


def sync_job_name(spec: DeploymentSpec) -> str:
    # The revision tag in the name: a finished Job means this revision is on OSS.
    return f"{spec.name}-sync-{revision_tag(spec, spec.weights.oss_uri or '')}"


def service_names(spec: DeploymentSpec) -> dict[str, str]:
    names = {"private": f"{spec.name}-private"}
    if spec.access.public:
        names["public"] = f"{spec.name}-public"
    return names


def serving_selector(spec: DeploymentSpec) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: spec.name, ROLE_LABEL: SERVING_ROLE}


def _meta(spec: DeploymentSpec, name: str, **labels: str) -> dict:
    return {"name": name, "namespace": namespace_of(spec), "labels": owned_labels(spec, **labels)}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# -- namespace and secrets ---------------------------------------------------------------------
def namespace(spec: DeploymentSpec) -> dict:
    # The namespace may be shared by deployments: it carries the managed-by label only.
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace_of(spec), "labels": {"app.kubernetes.io/managed-by": "servenest"}}}


def oss_secret(spec: DeploymentSpec, access_key_id: str, access_key_secret: str) -> dict:
    """The OSS key for Fluid (keys ``akId``/``akSecret``, as the seed's Dataset reads them)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(spec, oss_secret_name(spec)),
            "data": {"akId": _b64(access_key_id), "akSecret": _b64(access_key_secret)}}


def api_key_secret(spec: DeploymentSpec, api_key: str) -> dict:
    if not api_key or "\n" in api_key:
        raise ValueError("the API key must be one non-empty line")
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(spec, api_key_secret_name(spec)), "data": {API_KEY_FIELD: _b64(api_key)}}


def redacted(obj: dict) -> dict:
    """A Secret with its values replaced, for plans and logs."""
    if obj.get("kind") != "Secret":
        return obj
    return {**obj, "data": {k: "<set at provision from a Prefect block>" for k in obj.get("data", {})}}


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


# -- the weights sync Job ------------------------------------------------------------------------
def sync_script(spec: DeploymentSpec) -> str:
    """ModelScope -> OSS, skipped when OSS already holds every file of a manifest at its size.

    The files go up first and the sha256 manifest last, so a manifest on OSS always means a
    finished sync; the summary line is what the pipeline parses from the Job's log.
    """
    dest = (spec.weights.oss_uri or "").rstrip("/")
    return scripts.HEADER + f"""# ServeNest weights sync: {q(spec.name)}: {q(spec.weights_repo)} -> {q(dest)}
DEST={q(dest)}
DIR=/work/model
{scripts.manifest_functions(spec)}
ensure_ossutil() {{
  command -v ossutil >/dev/null 2>&1 && return 0
  curl -fsSL -o /tmp/ossutil.zip {q(OSSUTIL_URL)}
  python3 -m zipfile -e /tmp/ossutil.zip /tmp/ossutil
  install -m 0755 /tmp/ossutil/ossutil-2.1.0-linux-amd64/ossutil /usr/local/bin/ossutil
}}

# OSS holds a finished sync: both manifests, and every listed file at its recorded size.
oss_verified() {{
  mkdir -p /work/manifest
  cd /work/manifest
  ossutil cp -f "$DEST/$SIZES" "$SIZES" >/dev/null 2>&1 || return 1
  ossutil cp -f "$DEST/$MANIFEST" "$MANIFEST" >/dev/null 2>&1 || return 1
  local path size got
  while IFS=$'\\t' read -r path size; do
    got="$(ossutil stat "$DEST/$path" 2>/dev/null | awk -F': *' '/^Content-Length/ {{print $2}}')"
    [[ "$got" == "$size" ]] || return 1
  done < "$SIZES"
}}

ensure_ossutil
if oss_verified; then
  echo "servenest: $DEST matches its manifest; nothing to sync"
  summary
  exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
{scripts.modelscope_download(spec)}list_files | xargs -0 -r sha256sum -- > "$MANIFEST"
current_sizes > "$SIZES"
ossutil rm -f "$DEST/$MANIFEST" >/dev/null 2>&1 || true
ossutil cp -r -f --exclude '.servenest-*' . "$DEST/"
ossutil cp -f "$SIZES" "$DEST/$SIZES"
ossutil cp -f "$MANIFEST" "$DEST/$MANIFEST"
echo "servenest: synced $(wc -l < "$SIZES") files to $DEST"
summary
"""


def sync_job(spec: DeploymentSpec) -> dict:
    disk_gib = max(10, math.ceil(spec.model_info.weight_gb * 1e9 / 2**30 * 1.1))
    secret = oss_secret_name(spec)
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(spec, sync_job_name(spec)),
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": owned_labels(spec, **{COMPONENT_LABEL: "weights-sync"})},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "sync",
                        "image": spec.engine.image or scripts.DEFAULT_IMAGES[spec.engine.kind],
                        "command": ["bash", "-c", sync_script(spec)],
                        "env": [_secret_env("OSS_ACCESS_KEY_ID", secret, "akId"),
                                _secret_env("OSS_ACCESS_KEY_SECRET", secret, "akSecret"),
                                {"name": "OSS_REGION", "value": spec.cloud.region},
                                {"name": "OSS_ENDPOINT", "value": oss_endpoint(spec.cloud.region)}],
                        "resources": {"requests": {"cpu": "4", "memory": "16Gi",
                                                   "ephemeral-storage": f"{disk_gib}Gi"}},
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    }],
                    "volumes": [{"name": "work", "emptyDir": {}}],
                },
            },
        },
    }


# -- the engine workload ---------------------------------------------------------------------------
def _tp_pp(spec: DeploymentSpec) -> tuple[int, int]:
    return parallelism(spec, hardware_candidates(spec)[0])


def engine_script(spec: DeploymentSpec, role: str) -> str:
    """What a serving container runs (role: single, leader or worker); keys stay in env."""
    adapter = adapter_for(spec)
    tp, pp = _tp_pp(spec)
    port = spec.access.port
    lines = [scripts.HEADER.rstrip("\n")]
    if spec.engine.version:
        lines.append(f"python3 -m pip install --quiet --upgrade {q(f'{spec.engine.kind}=={spec.engine.version}')}")
    ray_address = f"${{LWS_LEADER_ADDRESS}}:{scripts.RAY_PORT}"
    vllm_multi = spec.engine.kind == "vllm" and role != "single"
    if vllm_multi and role == "worker":
        # Retry here, not by exiting: under RecreateGroupOnPodRestart any container restart
        # recreates the whole group, leader included, and a worker usually starts first.
        lines += [f"until ray start --address=\"{ray_address}\" --block; do",
                  "  echo \"servenest: Ray head not reachable yet; retrying\"",
                  "  sleep 5",
                  "done"]
        return "\n".join(lines) + "\n"
    if vllm_multi:
        lines += [
            f"ray start --head --dashboard-host 127.0.0.1 --port={scripts.RAY_PORT}",
            f"want={tp * pp}",
            "until (( \"$(python3 -c 'import ray; ray.init(address=\"auto\", logging_level=\"ERROR\"); "
            "print(int(ray.cluster_resources().get(\"GPU\", 0)))' 2>/dev/null || echo 0)\" >= want )); do",
            "  echo \"servenest: waiting for $want GPUs in the Ray cluster\"",
            "  sleep 5",
            "done",
        ]
    if spec.engine.kind == "vllm":
        args = adapter.server_args(spec, MODEL_MOUNT, "0.0.0.0", port, tp, pp, spec.cloud.gpu_kind or "GPU")
        if vllm_multi:
            args += ["--distributed-executor-backend", "ray"]
        words = ["python3", "-m", adapter.module, *args]
    else:  # SGLang has no pipeline parallelism: every GPU of the group goes to --tp
        args = adapter.server_args(spec, MODEL_MOUNT, "0.0.0.0", port, tp * pp, 1, spec.cloud.gpu_kind or "GPU")
        if role != "single":
            args += ["--nnodes", str(spec.cloud.nodes), "--node-rank", "${LWS_WORKER_INDEX}",
                     "--dist-init-addr", f"${{LWS_LEADER_ADDRESS}}:{scripts.SGLANG_DIST_PORT}"]
        words = ["python3", "-m", adapter.module, *args]
    if "--trust-remote-code" not in words:
        words.append("--trust-remote-code")
    quoted = [w if w.startswith("${") else q(w) for w in words]
    quoted = [f'"{w}"' if w.startswith("${") else w for w in quoted]
    if spec.engine.kind == "sglang" and role != "worker":
        quoted += ["--api-key", '"$SGLANG_API_KEY"']
    lines.append("exec " + " ".join(quoted))
    return "\n".join(lines) + "\n"


def _probes(spec: DeploymentSpec) -> dict:
    # The start-up probe allows the whole load time the gate allows; after that, liveness
    # restarts a wedged engine and readiness keeps traffic off a busy restart.
    load_s = spec.health.deadline_s or default_deadline_s(spec.model_info.weight_gb)
    check = {"httpGet": {"path": "/health", "port": spec.access.port}}
    # /health can take seconds under load: a 1 s timeout would pull the only backend out
    # of the load balancers, and a liveness restart costs a whole model load.
    return {
        "startupProbe": {**check, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": max(3, math.ceil(load_s / PROBE_PERIOD_S))},
        "readinessProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 6},
        "livenessProbe": {**check, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 10, "failureThreshold": 12},
    }


def engine_labels(spec: DeploymentSpec) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: spec.name, COMPONENT_LABEL: "engine"}


def _pod_template(spec: DeploymentSpec, role: str, gpu_models: list[str] | None,
                  launch_id: str | None) -> dict:
    gpus = spec.cloud.gpus_per_node or 1
    serves = role in ("single", "leader")
    labels = owned_labels(spec, **{COMPONENT_LABEL: "engine", ACS_COMPUTE_CLASS: "gpu",
                                   ACS_GPU_MODEL: spec.cloud.gpu_kind or ""})
    if serves:
        labels[ROLE_LABEL] = SERVING_ROLE
    env = [{"name": k, "value": v} for k, v in {**scripts.SOCKET_ENV, **spec.engine.env}.items()]
    if serves:
        key_env = "VLLM_API_KEY" if spec.engine.kind == "vllm" else "SGLANG_API_KEY"
        env.append(_secret_env(key_env, api_key_secret_name(spec), API_KEY_FIELD))
    resources = {GPU_RESOURCE: str(gpus), "cpu": str(CPU_PER_GPU * gpus), "memory": f"{MEMORY_GIB_PER_GPU * gpus}Gi"}
    container = {
        "name": "engine",
        "image": spec.engine.image or scripts.DEFAULT_IMAGES[spec.engine.kind],
        "command": ["bash", "-c", engine_script(spec, role)],
        "env": env,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if serves:
        container["ports"] = [{"name": "http", "containerPort": spec.access.port}]
        container.update(_probes(spec))
    pod: dict = {
        "containers": [container],
        "volumes": [
            {"name": "model", "persistentVolumeClaim": {"claimName": dataset_name(spec), "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
        ],
    }
    if gpu_models:
        pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": ACK_GPU_NAME_LABEL, "operator": "In", "values": sorted(gpu_models)}]}]}}}
    meta: dict = {"labels": labels}
    if launch_id:  # a new id per launch rolls the pods, so they read a changed key Secret
        meta["annotations"] = {"servenest/launch-id": launch_id}
    return {"metadata": meta, "spec": pod}


def workload(spec: DeploymentSpec, gpu_models: list[str] | None = None, launch_id: str | None = None,
             replicas: int | None = None) -> dict:
    """The Deployment (pods) or LeaderWorkerSet (groups of ``cloud.nodes`` pods), starting at
    ``replicas.min`` replicas (``replicas``: the count an autoscaler set, kept by a relaunch)."""
    name = workload_name(spec)
    replicas = spec.replicas.min if replicas is None else replicas
    if workload_kind(spec) == "Deployment":
        template = _pod_template(spec, "single", gpu_models, launch_id)
        return {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(spec, name),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": serving_selector(spec)},
                # A pod holds all of a node's GPUs: a rolling update would need twice as many.
                "strategy": {"type": "Recreate"},
                "template": template,
            },
        }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": _meta(spec, name),
        "spec": {
            "replicas": replicas,
            # LeaderReady would deadlock: the leader is ready only once the workers joined.
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": spec.cloud.nodes,
                # A lost worker breaks the Ray cluster: restart the whole group.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod_template(spec, "leader", gpu_models, launch_id),
                "workerTemplate": _pod_template(spec, "worker", gpu_models, launch_id),
            },
        },
    }


# -- Services --------------------------------------------------------------------------------------
def services(spec: DeploymentSpec) -> list[dict]:
    """An intranet load balancer (the VPC's private address), and with ``access.public`` an
    internet one with the seed's annotations."""
    port = {"name": "serving", "port": spec.access.port, "protocol": "TCP", "targetPort": spec.access.port}
    names = service_names(spec)
    out = [{
        "apiVersion": "v1", "kind": "Service",
        "metadata": {**_meta(spec, names["private"]), "annotations": {LB_ADDRESS_TYPE: "intranet"}},
        "spec": {"type": "LoadBalancer", "selector": serving_selector(spec), "ports": [port]},
    }]
    if spec.access.public:
        out.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {**_meta(spec, names["public"]),
                         "annotations": {LB_ADDRESS_TYPE: "internet", LB_IP_VERSION: "ipv4"}},
            # No loadBalancerSourceRanges: Alibaba's CCM ignores them on a CLB (the spec check
            # requires access.allowed_cidrs to say 0.0.0.0/0 for public ack; the key guards it).
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "selector": serving_selector(spec), "ports": [port]},
        })
    return out
