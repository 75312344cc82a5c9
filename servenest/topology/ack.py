"""The ack topology: an ACK/ACS cluster, weights on OSS warmed by Fluid, vLLM/SGLang pods.

What seed 003 does by hand on a jump server with kubectl, as the topology interface:

- **preflight**: the cluster exists and is ``running`` (CS DescribeClusterDetail), a temporary
  kubeconfig works (CS DescribeClusterUserKubeconfig, then the real ``kubernetes`` client),
  Fluid (and for multi-pod groups LeaderWorkerSet) is installed, and on ACK node pools some
  node offers ``cloud.gpu_kind`` with ``cloud.gpus_per_node`` GPUs. Nothing is created.
- **provision**: wait for the cluster to run; record it.
- **stage_weights**: namespace and OSS Secret; a Job syncs ModelScope to ``weights.oss_uri``
  unless OSS holds a verified copy (skipped outright when the Job of this revision already
  finished); Fluid Dataset + JindoRuntime, then a DataLoad whose phase drives the progress
  artifact (not created again when the DataLoad of this revision completed).
- **launch**: API-key Secret, the Deployment or LeaderWorkerSet, the Services, and with
  ``replicas.max`` > ``replicas.min`` a PodMonitor and an HPA or KEDA ScaledObject (preflight
  chose which); waits for the load balancers' addresses.
- **status/logs/diagnostics**: pods, restarts (a crash loop is a dead engine), last logs.
- **teardown**: by label, in an order that releases the load balancers first and never
  leaves pods reading a dataset being deleted; waits for each kind to be gone; deletes the
  namespace only if ServeNest created it and no other deployment uses it.

Every apply is server-side apply, so a rerun converges on the rendered objects. The state
record keeps the cluster id, whether ServeNest created the namespace, and the endpoints.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from functools import cached_property

from servenest.cloud import scripts
from servenest.cloud.api import CloudSession
from servenest.cloud.credentials import open_session
from servenest.cloud.cs import Clusters, Kubeconfig
from servenest.cloud.ros import Stacks
from servenest.cloud.ros_template import render_ack_cluster_yaml
from servenest.errors import (
    CloudError,
    CloudInputError,
    CloudTransientError,
    ServeNestError,
    SpecError,
    StackFailedError,
    WeightsError,
)
from servenest.k8s import autoscaling, fluid, serving
from servenest.k8s.client import CUSTOM_METRICS_API, DEPLOYMENT_LABEL, RESOURCES, Kube, KubeNotFound
from servenest.spec import load_spec_data
from servenest.state import DeploymentState
from servenest.topology.base import (
    Endpoint,
    EngineStatus,
    Estimate,
    RuntimeState,
    StagedWeights,
    Topology,
)
from servenest.topology.ecs import (
    STAGING_RATE_BPS,
    delete_deployment_stacks,
    deployment_tags,
    redact_keys,
    stack_name,
)

log = logging.getLogger(__name__)
CLUSTER_WAIT_S = 1800
LB_WAIT_S = 600  # an SLB normally comes up in under a minute
DATASET_BIND_S = 900
GONE_WAIT_S = 600
POLL_S = 5.0
CRASH_RESTARTS = 3  # restarts of a pod that is not ready before it counts as crash-looping
# Waiting reasons that do not fix themselves. ErrImagePull is left out: a large image's first
# pull often fails and the next succeeds (ImagePullBackOff is the repeated failure).
_DEAD_REASONS = {"CrashLoopBackOff", "ImagePullBackOff", "CreateContainerConfigError",
                 "InvalidImageName", "CreateContainerError"}
# Deleted in this order; each kind is gone before the next: load balancers first (they
# bill and take traffic), the autoscalers before what they scale (KEDA's ScaledObject
# before the HPA it owns), then what owns pods (the sync Job's pod goes only with its Job),
# every pod before the dataset it mounts, Secrets last.
TEARDOWN_ORDER = ("Service", "ScaledObject", "HorizontalPodAutoscaler", "PodMonitor", "LeaderWorkerSet", "Deployment", "Job", "Pod", "DataLoad", "JindoRuntime",
                  "Dataset", "Secret")
_DATALOAD_PROGRESS = {"": 0.1, "Pending": 0.2, "Executing": 0.6, "Complete": 1.0}


def gpu_models_offering(nodes: list[dict], kind: str, gpus: int) -> tuple[list[str], dict[str, int]]:
    """(GPU model labels of the nodes that offer ``kind`` with ``gpus`` allocatable, every
    model seen with its node count) from ACK's ``aliyun.accelerator/nvidia_name`` labels."""
    matching, seen = set(), {}
    for node in nodes:
        model = (node.get("metadata", {}).get("labels") or {}).get(serving.ACK_GPU_NAME_LABEL)
        if not model:
            continue
        seen[model] = seen.get(model, 0) + 1
        allocatable = (node.get("status", {}).get("allocatable") or {}).get(serving.GPU_RESOURCE, "0")
        words = re.split(r"[-_ ]", model.upper())
        if kind.upper() in words and int(str(allocatable) or 0) >= gpus:
            matching.add(model)
    return sorted(matching), seen


def pod_problem(pod: dict) -> tuple[str, int | None] | None:
    """Why a pod's engine is dead (crash loop, image, failed), with the last exit code."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"pod {pod['metadata']['name']} failed: {status.get('reason') or status.get('message', '')}", None
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        restarts = cs.get("restartCount", 0)
        # restartCount never goes down: a pod that restarted long ago and is ready is fine.
        if waiting.get("reason") in _DEAD_REASONS or (restarts >= CRASH_RESTARTS and not cs.get("ready")):
            why = waiting.get("reason") or f"{restarts} restarts"
            return (f"pod {pod['metadata']['name']} container {cs.get('name')}: {why} "
                    f"(restarted {restarts} times, last exit {last.get('exitCode')})", last.get("exitCode"))
    return None


def _ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class AckTopology(Topology):
    name = "ack"

    clock: Callable[[], float] = staticmethod(time.monotonic)
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    _kube: Kube | None = None
    _kubeconfig: Kubeconfig | None = None

    @cached_property
    def session(self) -> CloudSession:
        return open_session(self.spec.cloud.region, self.spec.cloud.credentials_block)

    def gpu_demand(self) -> dict[str, int]:
        c = self.spec.cloud  # a copy may grow to replicas.max
        return {c.gpu_kind: c.gpus_per_node * c.nodes * self.spec.replicas.max}

    @property
    def clusters(self) -> Clusters:
        return Clusters(self.session, self.clock, self.sleep)

    @property
    def stacks(self) -> Stacks:
        return Stacks(self.session, self.clock)

    @property
    def creates_cluster(self) -> bool:
        return not self.spec.cloud.cluster_id

    @property
    def cluster_template(self) -> str:
        try:
            return render_ack_cluster_yaml(self.spec)
        except ValueError as exc:
            raise SpecError(f"{self.spec.name}: {exc}") from None

    @property
    def cluster_id(self) -> str:
        cid = self.spec.cloud.cluster_id or self.state.resources.get("cluster_id")
        if not cid:
            raise ServeNestError(f"{self.spec.name}: its cluster is not created yet; run provision first")
        return cid

    @property
    def namespace(self) -> str:
        return serving.namespace_of(self.spec)

    @property
    def poll_s(self) -> float:
        return POLL_S * self.session.timings.scale

    def scaled(self, seconds: float) -> float:
        return seconds * self.session.timings.scale

    @property
    def kube(self) -> Kube:
        """A client on a fresh temporary kubeconfig, fetched again when it nears expiry."""
        if self._kube is None or self._kubeconfig is None or self._kubeconfig.expired(margin_s=300):
            if self._kube is not None:
                self._kube.close()
            self._kubeconfig = self.clusters.kubeconfig(self.cluster_id)
            self._kube = Kube.from_kubeconfig(self._kubeconfig.text, sleep=self.sleep,
                                              backoff_scale=self.session.timings.scale)
        return self._kube

    # -- plan, preflight, price -------------------------------------------------------------------
    def objects(self, api_key: str | None = None, gpu_models: list[str] | None = None) -> list[dict]:
        """Every object ServeNest applies, in order (Secrets redacted without a key)."""
        spec = self.spec
        creds = None if api_key is None else self.session.creds
        out = [serving.namespace(spec),
               serving.oss_secret(spec, creds.access_key_id if creds else "-", creds.access_key_secret if creds else "-")]
        if spec.weights.source == "modelscope":
            out.append(serving.sync_job(spec))
        out += fluid.fluid_objects(spec, self.namespace, spec.weights.oss_uri or "")
        out.append(serving.api_key_secret(spec, api_key or "-"))
        out.append(serving.workload(spec, gpu_models))
        out += serving.services(spec)
        out += autoscaling.autoscaling_objects(spec, self.state.resources.get("autoscaler"))
        return out if api_key is not None else [serving.redacted(o) for o in out]

    def plan(self) -> dict:
        c = self.spec.cloud
        plan = {
            "cluster": {"cluster_id": c.cluster_id or "(created by ROS)", "region": c.region,
                        "namespace": self.namespace, "gpu_kind": c.gpu_kind, "gpus_per_pod": c.gpus_per_node,
                        "pods": c.nodes, "workload": serving.workload_kind(self.spec)},
            "kubernetes": self.objects(),
        }
        if self.spec.autoscaled:
            r = self.spec.replicas
            plan["autoscaling"] = {
                "replicas": {"min": r.min, "max": r.max}, "targets": self.spec.scale_targets,
                "autoscaler": self.state.resources.get("autoscaler") or self.spec.autoscaling.autoscaler,
                # The adapter is the cluster's (a Helm release): a person adds these once.
                "adapter_rules": autoscaling.adapter_rules(self.spec)}
        if self.creates_cluster:
            plan["ros_template"] = self.cluster_template
        return plan

    def preflight(self) -> dict:
        if self.creates_cluster and not self.state.resources.get("cluster_id"):
            # The cluster does not exist yet: ROS checks the template; the cluster checks
            # (Fluid, GPU nodes) run once provision has made it.
            self.stacks.validate(self.cluster_template)
            return {"cluster": "to be created by ROS", "stack": stack_name(self.spec.name)}
        detail = self.clusters.require(self.cluster_id)
        state = detail.get("state")
        if state != "running":
            raise CloudInputError(
                f"cluster {self.cluster_id} ({detail.get('name')}) is {state!r}; ServeNest deploys "
                f"only onto a running cluster" + (" (wait until it is running)" if state in ("initial", "updating", "upgrading", "scaling") else ""))
        version = self.kube.version()
        self._require_api("Dataset", "Fluid (the ack-fluid add-on) is not installed")
        if serving.workload_kind(self.spec) == "LeaderWorkerSet":
            self._require_api("LeaderWorkerSet", "LeaderWorkerSet (the lws add-on) is not installed")
        models = self._gpu_models(detail)
        self.state.resources.update(cluster_id=self.cluster_id, gpu_models=models)
        out = {"cluster": self.cluster_id, "state": state, "kubernetes": version.get("gitVersion"),
               "profile": detail.get("profile"), "gpu_models": models}
        if self.spec.autoscaled:
            out["autoscaler"] = self.state.resources["autoscaler"] = self._choose_autoscaler()
        return out

    def _has_api(self, kind: str) -> bool:
        try:
            self.kube.request("GET", Kube.path(kind, self.namespace), query={"limit": 1},
                              what=f"checking for {kind}")
        except KubeNotFound:
            return False
        return True

    def _choose_autoscaler(self, adapter_required: bool = True) -> str:
        """hpa or keda, from the spec's choice and what the cluster has installed."""
        choice = self.spec.autoscaling.autoscaler
        if choice == "auto":
            choice = "keda" if self.spec.autoscaling.prometheus_url and self._has_api("ScaledObject") else "hpa"
        self._require_api("PodMonitor", "Managed Service for Prometheus (its PodMonitor CRD, "
                          "monitoring.coreos.com) is not installed; autoscaling scrapes the engine through it")
        if choice == "keda":
            self._require_api("ScaledObject", "KEDA (its ScaledObject CRD, keda.sh) is not installed; "
                              "set autoscaling.autoscaler: hpa or install KEDA")
            return choice
        try:
            self.kube.request("GET", CUSTOM_METRICS_API, what="checking for the Custom Metrics API")
        except KubeNotFound:
            missing = (f"cluster {self.cluster_id}: no Custom Metrics API ({CUSTOM_METRICS_API}); install "
                       "ack-alibaba-cloud-metrics-adapter pointed at Managed Service for Prometheus, with the "
                       "rules `servenest plan` lists under autoscaling.adapter_rules")
            if adapter_required:
                raise CloudInputError(missing) from None
            log.warning("%s; until then the HPA keeps %d replica(s)", missing, self.spec.replicas.min)
        return choice

    def _require_api(self, kind: str, missing: str) -> None:
        if not self._has_api(kind):
            raise CloudInputError(f"cluster {self.cluster_id}: {missing}; install it first")

    def _gpu_models(self, detail: dict) -> list[str]:
        """The GPU models to pin pods to on ACK node pools; ACS places by pod labels."""
        c = self.spec.cloud
        nodes = self.kube.list("Node")
        models, seen = gpu_models_offering(nodes, c.gpu_kind or "", c.gpus_per_node or 1)
        if models:
            return models
        if str(detail.get("profile", "")).lower() in ("acs", "serverless") and not seen:
            return []  # serverless GPU: ACS provisions the kind the pod labels ask for
        found = ", ".join(f"{m} x{n}" for m, n in sorted(seen.items())) or "no GPU nodes"
        raise CloudInputError(
            f"cluster {self.cluster_id} has no node offering {c.gpus_per_node} {c.gpu_kind} GPU(s) "
            f"(found: {found}); change cloud.gpu_kind / cloud.gpus_per_node or add a node pool")

    def estimate(self) -> Estimate:
        c = self.spec.cloud
        r = self.spec.replicas
        if self.creates_cluster:
            lines, currency = self.stacks.priced_lines(self.cluster_template, {})
            hourly = round(sum(a for _, _, a in lines), 4)
            placement = f"new ACK cluster, {c.nodes * r.min} x {c.instance_types[0]} in {c.zones[0]}"
            if not self.spec.autoscaled:
                return Estimate(hourly, currency, placement, tuple(lines))
            # The budget must hold what the autoscaler may reach, so the figure is the
            # ceiling: the node pool grown to replicas.max.
            top, _ = self.stacks.priced_lines(render_ack_cluster_yaml(self.spec, at_max=True), {})
            ceiling = round(sum(a for _, _, a in top), 4)
            return Estimate(
                ceiling, currency, f"{placement}, autoscaled up to {c.nodes * r.max} ({r.min}-{r.max} replicas)",
                (*lines, (f"autoscaled to {r.max} replicas", "ALIYUN::CS::ManagedKubernetesCluster",
                          round(ceiling - hourly, 4))),
                note=f"{hourly:.2f} {currency}/hour at {r.min} replica(s), up to {ceiling:.2f} at "
                     f"{r.max}; the autoscaler adds nodes as the queue grows and gives them back after it drains.")
        gpus = (c.gpus_per_node or 1) * c.nodes * r.max
        pods = f"{c.nodes * r.min}-{c.nodes * r.max}" if self.spec.autoscaled else str(c.nodes * r.min)
        return Estimate(
            hourly=0.0, currency="CNY",
            placement=f"existing cluster {self.cluster_id}: {pods} pod(s) x {c.gpus_per_node} {c.gpu_kind}",
            lines=(("pods", f"{gpus} x {c.gpu_kind} GPU", 0.0),),
            note=("ServeNest creates no billed machines here: GPU node pools are billed by the "
                  "cluster already; on ACS, GPU pods are billed per second of use at the ACS "
                  "price list (not previewed), plus one intranet (and one internet) load balancer."),
        )

    # -- provision --------------------------------------------------------------------------------
    def provision(self) -> dict:
        if self.creates_cluster:
            self._create_cluster()
        detail = self.clusters.wait_running(self.cluster_id, self.scaled(CLUSTER_WAIT_S))
        self.state.resources.update(cluster_id=self.cluster_id, cluster_created=self.creates_cluster,
                                    cluster_name=detail.get("name"))
        if "gpu_models" not in self.state.resources:
            self.state.resources["gpu_models"] = self._gpu_models(detail)
        out = {"cluster": self.cluster_id, "name": detail.get("name"), "state": detail.get("state")}
        if self.spec.autoscaled and "autoscaler" not in self.state.resources:
            # A cluster ServeNest just made: its metrics adapter can only be set up now that the
            # cluster's Prometheus exists, so a missing one is a warning, not a failure.
            self.state.resources["autoscaler"] = self._choose_autoscaler(adapter_required=False)
            out["autoscaler"] = self.state.resources["autoscaler"]
        self.save()
        return out

    def _create_cluster(self) -> None:
        """One ROS stack with the cluster; a rerun resumes the recorded (or named) stack and the
        ClientToken recorded before CreateStack keeps a lost response from making a second."""
        res = self.state.resources
        if not res.get("stack_id"):
            found = self.stacks.find_by_name(stack_name(self.spec.name))
            if found:
                res["stack_id"] = found["StackId"]
            else:
                res.setdefault("client_token", uuid.uuid4().hex)
                self.save()  # before CreateStack
                res["stack_id"] = self.stacks.create(
                    stack_name(self.spec.name), self.cluster_template, {}, deployment_tags(self.spec.name),
                    res["client_token"], timeout_minutes=90)
            self.save()
        result = self.stacks.wait_created(res["stack_id"])
        if result.status != "CREATE_COMPLETE":
            raise StackFailedError(result.explain(), code=result.status)
        res["cluster_id"] = result.outputs["ClusterId"]
        self.save()

    # -- weights ----------------------------------------------------------------------------------
    def _apply(self, obj: dict) -> dict:
        """Apply, refusing to take over an object of the same name ServeNest did not make
        for this deployment (a forced apply would adopt it, and teardown would delete it)."""
        meta = obj["metadata"]
        current = self.kube.get(obj["kind"], meta.get("namespace"), meta["name"])
        owner = ((current or {}).get("metadata", {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
        if current is not None and owner != self.spec.name:
            raise CloudInputError(
                f"{obj['kind']} {meta.get('namespace')}/{meta['name']} already exists and is not "
                f"{self.spec.name}'s ({'deployment ' + owner if owner else 'not made by ServeNest'}); "
                f"rename the deployment or use another cloud.namespace")
        return self.kube.apply(obj)

    def _ensure_namespace(self) -> None:
        # Before the first write: teardown touches the cluster only when this is set, so a
        # run that stopped at a check does not reach into a cluster it never changed.
        if not self.state.resources.get("touched"):
            self.state.resources.update(touched=True, cluster_id=self.cluster_id)
            self.save()
        if self.kube.get("Namespace", None, self.namespace) is None:
            self.kube.apply(serving.namespace(self.spec))
            # Recorded so teardown deletes only a namespace ServeNest made.
            self.state.resources["namespace_created"] = True
            self.save()

    def stage_weights(self, progress: Callable[[float, str], None] | None = None) -> StagedWeights:
        report = progress or (lambda pct, msg: None)
        spec, creds = self.spec, self.session.creds
        if creds.security_token:
            raise CloudInputError(
                "the OSS Secret Fluid reads needs a long-lived AccessKey; the credentials block "
                f"{spec.cloud.credentials_block!r} holds an STS token, which would expire under the Dataset")
        self._ensure_namespace()
        self._apply(serving.oss_secret(spec, creds.access_key_id, creds.access_key_secret))
        synced = spec.weights.source == "modelscope"
        share = 0.5 if synced else 0.0  # of the progress bar the sync takes
        files, size, digest = 0, 0, fluid.revision_tag(spec, spec.weights.oss_uri or "")
        if synced:
            files, size, digest = self._sync_to_oss(lambda f, m: report(100 * share * f, m))
        for obj in fluid.fluid_objects(spec, self.namespace, spec.weights.oss_uri or "")[:2]:
            self._apply(obj)
        self._wait_bound()
        report(100 * share + 5, f"Fluid dataset {fluid.dataset_name(spec)} bound to {spec.weights.oss_uri}")
        reused = self._warm(lambda f, m: report(100 * (share + (1 - share) * f), m))
        self.state.weights = {"location": spec.weights.oss_uri, "files": files, "bytes": size,
                              "digest": digest, "dataset": fluid.dataset_name(spec)}
        self.save()
        return StagedWeights(location=spec.weights.oss_uri or "", files=files, bytes=size,
                             digest=digest, reused=reused)

    def _timeout_for_weights(self) -> float:
        return self.scaled(1800 + 2 * self.spec.model_info.weight_gb * 1e9 / STAGING_RATE_BPS)

    def _sync_to_oss(self, progress: Callable[[float, str], None]) -> tuple[int, int, str]:
        spec = self.spec
        name = serving.sync_job_name(spec)
        job = self.kube.get("Job", self.namespace, name)
        if job and _job_failed(job):
            # A rerun retries a failed sync from scratch (the Job's own retries are spent).
            self.kube.delete("Job", self.namespace, name)
            self.kube.wait_gone("Job", self.namespace, name, self.scaled(GONE_WAIT_S), self.poll_s, self.clock)
            job = None
        if job is None:
            self._apply(serving.sync_job(spec))
        deadline = self.clock() + self._timeout_for_weights()
        started = self.clock()
        while True:
            job = self.kube.get("Job", self.namespace, name) or {}
            status = job.get("status") or {}
            if status.get("succeeded"):
                break
            if _job_failed(job):
                raise WeightsError(f"syncing {spec.weights_repo} to {spec.weights.oss_uri} failed "
                                   f"(Job {name}):\n" + "\n".join(self._job_log(name)[-20:]))
            if self.clock() >= deadline:
                raise WeightsError(f"Job {name} did not finish syncing in {deadline - started:.0f} s")
            expected = spec.model_info.weight_gb * 1e9 / STAGING_RATE_BPS
            progress(min(0.95, (self.clock() - started) / max(expected, 1.0)),
                     f"syncing {spec.weights_repo} from ModelScope to {spec.weights.oss_uri} (Job {name})")
            self.sleep(self.poll_s)
        found = scripts.WEIGHTS_LINE.search("\n".join(self._job_log(name)))
        if found:
            files, size, digest = int(found.group(1)), int(found.group(2)), found.group(3)
        elif self.state.weights.get("digest"):  # the Job's pod was cleaned up since; we recorded it
            w = self.state.weights
            files, size, digest = w.get("files", 0), w.get("bytes", 0), w["digest"]
        else:
            raise WeightsError(f"Job {name} finished without reporting the synced manifest")
        progress(1.0, f"{files} files ({size / 1e9:.1f} GB) verified on {spec.weights.oss_uri}")
        return files, size, digest

    def _job_log(self, job: str) -> list[str]:
        pods = self.kube.list("Pod", self.namespace, {"job-name": job})
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
        return redact_keys(self.kube.pod_log(self.namespace, pods[-1]["metadata"]["name"], 200)).splitlines() if pods else []

    def _wait_bound(self) -> None:
        name = fluid.dataset_name(self.spec)
        deadline = self.clock() + self.scaled(DATASET_BIND_S)
        while True:
            ds = self.kube.get("Dataset", self.namespace, name) or {}
            phase = (ds.get("status") or {}).get("phase", "")
            if phase == "Bound":
                return
            if phase == "Failed":
                raise WeightsError(f"Fluid Dataset {name} failed to bind {self.spec.weights.oss_uri}: "
                                   f"{(ds.get('status') or {}).get('conditions')}")
            if self.clock() >= deadline:
                raise WeightsError(f"Fluid Dataset {name} not bound after {DATASET_BIND_S} s (phase "
                                   f"{phase or 'none'}); is the JindoRuntime scheduled?")
            self.sleep(self.poll_s)

    def _warm(self, progress: Callable[[float, str], None]) -> bool:
        """Run the DataLoad of this revision; True when a completed one was already there."""
        load = fluid.dataload(self.spec, self.namespace, self.spec.weights.oss_uri or "")
        name = load["metadata"]["name"]
        current = self.kube.get("DataLoad", self.namespace, name)
        phase = ((current or {}).get("status") or {}).get("phase", "")
        if phase == "Complete":
            progress(1.0, f"DataLoad {name} already completed for this revision; not warming again")
            return True
        if phase == "Failed":
            self.kube.delete("DataLoad", self.namespace, name)
            self.kube.wait_gone("DataLoad", self.namespace, name, self.scaled(GONE_WAIT_S), self.poll_s, self.clock)
        self._apply(load)
        last = None
        for obj in self.kube.watch_object("DataLoad", self.namespace, name, self._timeout_for_weights(), self.clock):
            status = obj.get("status") or {}
            phase = status.get("phase", "")
            if phase != last:
                last = phase
                progress(_DATALOAD_PROGRESS.get(phase, 0.1), f"DataLoad {name}: {phase or 'created'}")
            if phase == "Complete":
                return False
            if phase == "Failed":
                why = "; ".join(c.get("message", "") for c in status.get("conditions") or [] if c.get("message"))
                raise WeightsError(f"warming {self.spec.weights.oss_uri} failed (DataLoad {name} Failed): "
                                   f"{why or 'no reason given'}")
        raise WeightsError(f"DataLoad {name} did not complete in time (last phase {last or 'none'})")

    # -- launch and serving -----------------------------------------------------------------------
    def launch(self, api_key: str) -> dict:
        spec = self.spec
        self._ensure_namespace()
        self._apply(serving.api_key_secret(spec, api_key))
        workload = serving.workload(spec, self.state.resources.get("gpu_models"), launch_id=uuid.uuid4().hex[:12],
                                    replicas=self._live_replicas())
        self._apply(workload)
        services = serving.services(spec)
        for svc in services:
            self._apply(svc)
        for obj in autoscaling.autoscaling_objects(spec, self.state.resources.get("autoscaler")):
            self._apply(obj)
        self.state.engine = {"workload": [workload["kind"], workload["metadata"]["name"]],
                             "services": serving.service_names(spec), "launched_at": time.time()}
        self.save()
        addresses = {role: self._wait_address(name) for role, name in serving.service_names(spec).items()}
        self.state.engine["addresses"] = addresses
        self.save()
        return {"workload": f"{workload['kind']}/{workload['metadata']['name']}", "addresses": addresses}

    def _live_replicas(self) -> int | None:
        """A relaunch keeps the count the autoscaler reached (within the spec's bounds) rather
        than resetting it to replicas.min under a queue."""
        if not self.spec.autoscaled:
            return None
        live = self.kube.get(serving.workload_kind(self.spec), self.namespace, serving.workload_name(self.spec))
        count = ((live or {}).get("spec") or {}).get("replicas")
        if count is None:
            return None
        return min(max(int(count), self.spec.replicas.min), self.spec.replicas.max)

    def _wait_address(self, service: str) -> str:
        deadline = self.clock() + self.scaled(LB_WAIT_S)
        while True:
            svc = self.kube.get("Service", self.namespace, service) or {}
            ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            address = next((i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")), None)
            if address:
                return address
            if self.clock() >= deadline:
                raise CloudError(
                    f"Service {self.namespace}/{service} got no load-balancer address in {LB_WAIT_S} s; "
                    f"check the cluster's cloud-controller-manager events (kubectl -n {self.namespace} "
                    f"describe service {service}) and the account's SLB quota")
            self.sleep(self.poll_s)

    def endpoint(self) -> Endpoint:
        addresses = self.state.engine.get("addresses") or {}
        role = "public" if self.spec.access.public else "private"
        if role not in addresses:
            raise ServeNestError(f"{self.spec.name} has no {role} load-balancer address yet; run provision first")
        return Endpoint(f"http://{addresses[role]}:{self.spec.access.port}", self.spec.served_model_name,
                        self.spec.access.public)

    def _engine_pods(self) -> list[dict]:
        pods = self.kube.list("Pod", self.namespace, serving.engine_labels(self.spec))
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def status(self) -> EngineStatus:
        if not self.state.engine:
            return EngineStatus(False, detail="not launched")
        try:
            kind, name = self.state.engine["workload"]
            workload = self.kube.get(kind, self.namespace, name)
            if workload is None:
                return EngineStatus(False, detail=f"{kind} {name} does not exist")
            pods = self._engine_pods()
        except CloudTransientError as exc:
            return EngineStatus(True, None, f"unknown ({exc})")  # an API hiccup is no verdict
        for pod in pods:
            problem = pod_problem(pod)
            if problem:
                return EngineStatus(False, problem[1], problem[0])
        ready = sum(_ready(p) for p in pods)
        want = self.spec.cloud.nodes * int((workload.get("spec") or {}).get("replicas", 1))
        phases = ", ".join(sorted({(p.get("status") or {}).get("phase", "Pending") for p in pods})) or "no pods yet"
        return EngineStatus(True, None, f"{kind} {name}: {ready}/{want} pods ready ({phases})")

    def runtime_state(self) -> RuntimeState:
        st = self.status()
        try:
            pods = self._engine_pods() if self.state.engine else []
        except CloudTransientError:
            pods = []
        restarts = sum(cs.get("restartCount", 0) for p in pods
                       for cs in (p.get("status") or {}).get("containerStatuses") or [])
        return RuntimeState(st.running, st.detail, restarts)

    def restart_engine(self, api_key: str) -> dict:
        # The workload's controller replaces deleted pods with fresh ones of the same template.
        pods = self._engine_pods() if self.state.engine else []
        if not pods:
            raise ServeNestError(f"{self.spec.name} has no engine pods to restart")
        # With several replicas, only the broken ones: the others go on serving.
        broken = [p for p in pods if pod_problem(p) or not _ready(p)]
        names = [p["metadata"]["name"] for p in broken or pods]
        for name in names:
            self.kube.delete("Pod", self.namespace, name)
        return {"pods_deleted": names}

    def _serving_pod(self) -> dict | None:
        pods = [p for p in self._engine_pods()
                if p["metadata"].get("labels", {}).get(serving.ROLE_LABEL) == serving.SERVING_ROLE]
        return pods[0] if pods else None

    def _pod_logs(self, pod: dict, lines: int) -> list[str]:
        name = pod["metadata"]["name"]
        restarted = any(cs.get("restartCount", 0) for cs in (pod.get("status") or {}).get("containerStatuses") or [])
        text = ""
        if restarted:  # the crash's own output is in the previous container's log
            text = self.kube.pod_log(self.namespace, name, lines, previous=True)
            text = (f"--- previous container of {name} ---\n{text}\n--- current ---\n" if text else "")
        text += self.kube.pod_log(self.namespace, name, lines)
        return redact_keys(text).splitlines()[-lines:]

    def logs(self, lines: int = 40) -> list[str]:
        """The log of the pod in trouble (a crashing worker, say), else the serving pod's."""
        if not self.state.engine:
            return []
        pods = self._engine_pods()
        troubled = [p for p in pods if pod_problem(p)]
        pod = troubled[0] if troubled else self._serving_pod()
        return self._pod_logs(pod, lines) if pod else []

    def diagnostics(self) -> dict:
        if not self.state.engine:
            return {}
        out: dict = {}
        for pod in self.kube.list("Pod", self.namespace, serving.engine_labels(self.spec)):
            st = pod.get("status") or {}
            conditions = [f"{c.get('type')}={c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()
                          for c in st.get("conditions") or []]
            containers = [f"{cs.get('name')}: ready={cs.get('ready')} restarts={cs.get('restartCount', 0)} "
                          f"state={cs.get('state')} last={cs.get('lastState')}" for cs in st.get("containerStatuses") or []]
            out[f"pod {pod['metadata']['name']}"] = {
                "phase": st.get("phase", ""), "conditions": conditions, "containers": containers,
                "logs": self._pod_logs(pod, 40)}
        for role, name in (self.state.engine.get("services") or {}).items():
            svc = self.kube.get("Service", self.namespace, name) or {}
            out[f"service {name}"] = {"role": role, "load_balancer": str((svc.get("status") or {}).get("loadBalancer"))}
        return out

    # -- teardown ---------------------------------------------------------------------------------
    def teardown(self) -> dict:
        result = self._teardown_objects()
        # The cluster goes only if ServeNest made it, and only after its objects: the load
        # balancers its cloud controller made would otherwise outlive it.
        if self.state.resources.get("stack_id") or self.creates_cluster:
            result["stacks_deleted"] = delete_deployment_stacks(
                self.stacks, self.spec.name, self.state.resources.get("stack_id"))
        self.state.resources, self.state.engine = {}, {}
        self.save()
        return result

    def _teardown_objects(self) -> dict:
        if not self.state.resources.get("touched"):
            return {"deleted": [], "cluster": "not changed by this deployment"}
        try:
            kube = self.kube
        except CloudError as exc:
            if exc.code == "ErrorClusterNotFound" or "does not exist" in str(exc):
                return {"deleted": [], "cluster": "gone"}
            raise
        return delete_owned(kube, self.namespace, self.spec.name,
                            delete_namespace=bool(self.state.resources.get("namespace_created")),
                            timeout_s=self.scaled(GONE_WAIT_S), poll_s=self.poll_s, clock=self.clock)

    @classmethod
    def teardown_recorded(cls, state: DeploymentState) -> dict:
        spec = load_spec_data(state.spec) if _loads(state.spec) else None
        cloud = state.spec.get("cloud") or {}
        if spec is not None:
            return cls(spec, state).teardown()
        cluster_id = cloud.get("cluster_id") or state.resources.get("cluster_id")
        session = open_session(cloud.get("region", "cn-hangzhou"), cloud.get("credentials_block", "default"))
        clusters = Clusters(session)
        out: dict = {"deleted": []}
        if cluster_id and clusters.get(cluster_id) is not None:
            kube = Kube.from_kubeconfig(clusters.kubeconfig(cluster_id).text, backoff_scale=session.timings.scale)
            out = delete_owned(kube, cloud.get("namespace", "llm-model"), state.name,
                               delete_namespace=bool(state.resources.get("namespace_created")),
                               timeout_s=GONE_WAIT_S * session.timings.scale, poll_s=POLL_S * session.timings.scale)
        if state.resources.get("stack_id"):
            out["stacks_deleted"] = delete_deployment_stacks(Stacks(session), state.name, state.resources["stack_id"])
        return out


def _loads(data: dict) -> bool:
    try:
        load_spec_data(data)
    except Exception:  # noqa: BLE001 - a spec an older ServeNest wrote; fall back to the record
        return False
    return True


def _job_failed(job: dict) -> bool:
    return any(c.get("type") == "Failed" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def delete_owned(kube: Kube, namespace: str, deployment: str, *, delete_namespace: bool,
                 timeout_s: float, poll_s: float, clock: Callable[[], float] = time.monotonic) -> dict:
    """Delete what carries the deployment's label, kind by kind in :data:`TEARDOWN_ORDER`,
    waiting for each kind to be gone; then the namespace, if asked and no longer used."""
    deleted: list[str] = []
    selector = {DEPLOYMENT_LABEL: deployment}
    if kube.get("Namespace", None, namespace) is None:
        return {"deleted": deleted, "namespace": "gone"}
    for kind in TEARDOWN_ORDER:
        try:
            objects = kube.list(kind, namespace, selector)
        except KubeNotFound:  # the kind's API (a CRD) is not installed: nothing of it exists
            continue
        for obj in objects:
            if kind != "Pod" and kube.delete(kind, namespace, obj["metadata"]["name"]):
                deleted.append(f"{kind}/{obj['metadata']['name']}")
        for obj in objects:
            kube.wait_gone(kind, namespace, obj["metadata"]["name"], timeout_s, poll_s, clock)
    out: dict = {"deleted": deleted}
    if delete_namespace:
        # Anything not this deployment's (another deployment's, or a person's) keeps it.
        others = [o for kind in ("Deployment", "LeaderWorkerSet", "Dataset", "Service", "Job", "Pod")
                  for o in _list_or_empty(kube, kind, namespace)
                  if (o["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) != deployment]
        if others:
            out["namespace"] = f"kept: used by {len(others)} object(s) of other deployments"
        else:
            kube.delete("Namespace", None, namespace)
            kube.wait_gone("Namespace", None, namespace, timeout_s, poll_s, clock)
            out["namespace"] = "deleted"
    return out


def _list_or_empty(kube: Kube, kind: str, namespace: str) -> list[dict]:
    try:
        return kube.list(kind, namespace)
    except KubeNotFound:
        return []


assert set(TEARDOWN_ORDER) <= set(RESOURCES)
