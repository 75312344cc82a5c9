"""The autoscaling objects: valid against the Kubernetes (HPA v2) and the official PodMonitor
and KEDA ScaledObject CRD schemas, shaped as ACK's LLM autoscaling guide has them."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest

from servenest.k8s import autoscaling, serving
from servenest.topology import open_topology
from tests.unit.test_k8s_fluid import crd_schema
from tests.unit.test_k8s_serving import K8S_VERSION

SCALED = {"replicas": {"min": 1, "max": 4}}
KV = {"vllm:num_requests_waiting": 3, "vllm:gpu_cache_usage_perc": 0.8}  # the default image's vLLM 0.7


@pytest.fixture
def qwq(make_spec):
    return make_spec("ack", **SCALED, autoscaling={"targets": KV})


@pytest.fixture
def r1_keda(make_spec):
    return make_spec("ack", name="deepseek-r1", model="deepseek-ai/DeepSeek-R1",
                     cloud={"gpu_kind": "H20", "gpus_per_node": 8, "nodes": 2}, replicas={"min": 1, "max": 2},
                     autoscaling={"autoscaler": "keda", "prometheus_url": "http://prometheus.monitoring:9090"})


def validate(obj: dict) -> None:
    if obj["kind"] in ("PodMonitor", "ScaledObject"):
        jsonschema.validate(obj, crd_schema(obj["kind"]))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_hpa_and_pod_monitor_validate_and_follow_the_ack_guide(qwq):
    monitor, hpa = autoscaling.autoscaling_objects(qwq)
    validate(monitor)
    validate(hpa)
    # Managed Service for Prometheus discovers the PodMonitor by the guide's annotations and
    # scrapes only the serving pods' /metrics on the named port.
    assert monitor["metadata"]["annotations"] == autoscaling.ARMS_ANNOTATIONS
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert monitor["spec"]["selector"]["matchLabels"] == serving.serving_selector(qwq)
    container = serving.workload(qwq)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "http", "containerPort": qwq.access.port} in container["ports"]
    assert {r["targetLabel"] for r in endpoint["relabelings"]} >= {"pod_name", "pod_namespace"}

    s = hpa["spec"]
    assert s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": qwq.name}
    assert (s["minReplicas"], s["maxReplicas"]) == (1, 4)
    assert [(m["type"], m["pods"]["metric"]["name"], m["pods"]["target"]) for m in s["metrics"]] == [
        ("Pods", "vllm:num_requests_waiting", {"type": "AverageValue", "averageValue": "3"}),
        ("Pods", "vllm:gpu_cache_usage_perc", {"type": "AverageValue", "averageValue": "800m"}),
    ]
    # The adapter serves each metric under the very name the HPA asks for.
    assert [r["name"]["as"] for r in autoscaling.adapter_rules(qwq)] == list(KV)


def test_new_pods_start_at_min_get_traffic_once_ready_and_read_the_warmed_cache(qwq, make_spec):
    dep = serving.workload(qwq)
    assert dep["spec"]["replicas"] == 1
    assert serving.workload(make_spec("ack", replicas={"min": 2, "max": 3}))["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    # Every replica mounts the one Fluid dataset's PVC: the cache the DataLoad warmed.
    [claim] = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim == f"{qwq.name}-weights"


def test_keda_scaled_object_on_a_leader_worker_set_scales_whole_groups(r1_keda):
    monitor, scaled = autoscaling.autoscaling_objects(r1_keda)
    validate(monitor)
    validate(scaled)
    s = scaled["spec"]
    assert s["scaleTargetRef"] == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                                   "name": "deepseek-r1"}
    assert (s["minReplicaCount"], s["maxReplicaCount"]) == (1, 2)
    [trigger] = s["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus.monitoring:9090", "threshold": "5.0",
        "query": 'sum(vllm:num_requests_waiting{pod_namespace="llm-model",servenest_deployment="deepseek-r1"})'}
    # The LWS scale subresource selects leaders; the PodMonitor scrapes only them too.
    leader = serving.workload(r1_keda)["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= leader["metadata"]["labels"].items()


def test_lws_hpa_targets_the_group_and_validates(make_spec):
    spec = make_spec("ack", name="r1", model="deepseek-ai/DeepSeek-R1", replicas={"min": 2, "max": 3},
                     cloud={"gpu_kind": "H20", "gpus_per_node": 8, "nodes": 2})
    _, hpa = autoscaling.autoscaling_objects(spec)
    validate(hpa)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert serving.workload(spec)["spec"]["replicas"] == 2


def test_the_plan_shows_the_autoscaler_and_fixed_replicas_have_none(qwq, make_spec):
    plan = open_topology(qwq).plan()
    kinds = [o["kind"] for o in plan["kubernetes"]]
    assert kinds[-2:] == ["PodMonitor", "HorizontalPodAutoscaler"]
    assert plan["autoscaling"]["replicas"] == {"min": 1, "max": 4}
    fixed = open_topology(make_spec("ack")).plan()
    assert "autoscaling" not in fixed
    assert not {"PodMonitor", "HorizontalPodAutoscaler", "ScaledObject"} & {o["kind"] for o in fixed["kubernetes"]}


@pytest.mark.parametrize(("value", "text"), [(5, "5"), (5.0, "5"), (0.8, "800m"), (2.5, "2500m")])
def test_quantities(value, text):
    assert autoscaling.quantity(value) == text


@pytest.mark.parametrize(("kind", "path", "wrong"), [
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "relabelings", 0, "action"), "copy"),
    ("HorizontalPodAutoscaler", ("spec", "maxReplicas"), "4"),
])
def test_the_schemas_catch_a_wrong_field(qwq, kind, path, wrong):
    import copy

    [obj] = [copy.deepcopy(o) for o in autoscaling.autoscaling_objects(qwq) if o["kind"] == kind]
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = wrong
    with pytest.raises(Exception, match=wrong):
        validate(obj)
