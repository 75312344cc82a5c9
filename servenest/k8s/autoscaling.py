"""Autoscaling objects of an ack deployment: a PodMonitor, and an HPA or a KEDA ScaledObject.

The way ACK documents it ("Configure auto scaling for standalone or distributed LLM inference
services", help.aliyun.com/zh/ack/cloud-native-ai-suite/user-guide/configuring-elastic-scaling-for-single-machine-multi-machine-inference):

1. a PodMonitor (annotated for discovery by Managed Service for Prometheus) scrapes the
   engine's ``/metrics`` on the serving container's ``http`` port, relabelling the pod and
   namespace into ``pod_name``/``pod_namespace``;
2. ``ack-alibaba-cloud-metrics-adapter`` serves those series on the Custom Metrics API
   (:func:`adapter_rules` are the rules its Helm values need, shown by ``servenest plan``);
3. an ``autoscaling/v2`` HPA scales the workload on ``Pods`` metrics, each an average per pod.

Where the cluster has KEDA, a ScaledObject with Prometheus triggers replaces the HPA (KEDA
makes the HPA itself). A LeaderWorkerSet scales by whole groups through its scale
subresource, whose selector picks the leaders: the pods that serve and expose the metrics.
Pure functions of the spec; :mod:`servenest.topology.ack` applies them.
"""

from __future__ import annotations

from servenest.k8s import serving
from servenest.k8s.fluid import owned_labels
from servenest.spec import DeploymentSpec

SCRAPE_INTERVAL = "15s"  # the guide's interval; the HPA controller reads every 15 s too
KEDA_POLLING_S = 15
# Managed Service for Prometheus discovers PodMonitors carrying these (the guide's template).
ARMS_ANNOTATIONS = {"arms.prometheus.io/discovery": "true", "arms.prometheus.io/resource": "arms"}
DEPLOYMENT_SERIES_LABEL = "servenest_deployment"  # what KEDA's query selects one deployment by


def autoscaler_kind(spec: DeploymentSpec, resolved: str | None = None) -> str | None:
    """HorizontalPodAutoscaler or ScaledObject (None: fixed replicas). ``resolved`` is what
    preflight chose for ``autoscaler: auto``; before it ran, auto plans the HPA."""
    if not spec.autoscaled:
        return None
    choice = resolved or spec.autoscaling.autoscaler
    return "ScaledObject" if choice == "keda" else "HorizontalPodAutoscaler"


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units (0.8 -> 800m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _meta(spec: DeploymentSpec, name: str, **extra: dict) -> dict:
    return {"name": name, "namespace": serving.namespace_of(spec), "labels": owned_labels(spec), **extra}


def _target_ref(spec: DeploymentSpec) -> dict:
    api = "apps/v1" if serving.workload_kind(spec) == "Deployment" else "leaderworkerset.x-k8s.io/v1"
    return {"apiVersion": api, "kind": serving.workload_kind(spec), "name": serving.workload_name(spec)}


def pod_monitor(spec: DeploymentSpec) -> dict:
    def copy(source: str, target: str) -> dict:
        return {"action": "replace", "sourceLabels": [source], "targetLabel": target}

    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": _meta(spec, f"{spec.name}-engine", annotations=dict(ARMS_ANNOTATIONS)),
        "spec": {
            "selector": {"matchLabels": serving.serving_selector(spec)},
            "namespaceSelector": {"matchNames": [serving.namespace_of(spec)]},
            "podMetricsEndpoints": [{
                "port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL,
                "relabelings": [
                    copy("__meta_kubernetes_pod_name", "pod_name"),
                    copy("__meta_kubernetes_namespace", "pod_namespace"),
                    copy("__meta_kubernetes_pod_label_servenest_deployment", DEPLOYMENT_SERIES_LABEL),
                ],
            }],
        },
    }


def adapter_rules(spec: DeploymentSpec) -> list[dict]:
    """``AlibabaCloudMetricsAdapter.prometheus.adapter.rules.custom`` entries that serve each
    target metric per pod under its own name, from the PodMonitor's relabelled series."""
    return [{
        "seriesQuery": f'{name}{{pod_namespace!="",pod_name!=""}}',
        "resources": {"overrides": {"pod_namespace": {"resource": "namespace"},
                                    "pod_name": {"resource": "pod"}}},
        "name": {"matches": name, "as": name},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    } for name in spec.scale_targets]


def _behavior(spec: DeploymentSpec) -> dict:
    # Up at once (a queue is users waiting); down only after the window, because a replica
    # given back costs a whole model load when the load returns.
    return {"scaleUp": {"stabilizationWindowSeconds": 0},
            "scaleDown": {"stabilizationWindowSeconds": spec.autoscaling.scale_down_window_s}}


def _scaler(spec: DeploymentSpec, api_version: str, kind: str, body: dict) -> dict:
    """An autoscaler of the workload, named after it."""
    return {"apiVersion": api_version, "kind": kind, "metadata": _meta(spec, serving.workload_name(spec)),
            "spec": {"scaleTargetRef": _target_ref(spec), **body}}


def hpa(spec: DeploymentSpec) -> dict:
    return _scaler(spec, "autoscaling/v2", "HorizontalPodAutoscaler", {
        "minReplicas": spec.replicas.min, "maxReplicas": spec.replicas.max,
        "metrics": [{"type": "Pods", "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": quantity(target)}}}
            for name, target in spec.scale_targets.items()],
        "behavior": _behavior(spec),
    })


def keda_query(spec: DeploymentSpec, metric: str) -> str:
    return (f'sum({metric}{{pod_namespace="{serving.namespace_of(spec)}",'
            f'{DEPLOYMENT_SERIES_LABEL}="{spec.name}"}})')


def scaled_object(spec: DeploymentSpec) -> dict:
    # AverageValue: KEDA's HPA divides the summed query by the replicas, as the Pods HPA does.
    return _scaler(spec, "keda.sh/v1alpha1", "ScaledObject", {
        "minReplicaCount": spec.replicas.min, "maxReplicaCount": spec.replicas.max,
        "pollingInterval": KEDA_POLLING_S,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
        "triggers": [{
            "type": "prometheus", "name": metric.replace(":", "-").replace("_", "-"),
            "metricType": "AverageValue",
            "metadata": {"serverAddress": spec.autoscaling.prometheus_url or "",
                         "query": keda_query(spec, metric), "threshold": str(target)},
        } for metric, target in spec.scale_targets.items()],
    })


def autoscaling_objects(spec: DeploymentSpec, resolved: str | None = None) -> list[dict]:
    """The PodMonitor and the autoscaler, in apply order (none for fixed replicas)."""
    kind = autoscaler_kind(spec, resolved)
    if kind is None:
        return []
    return [pod_monitor(spec), scaled_object(spec) if kind == "ScaledObject" else hpa(spec)]
