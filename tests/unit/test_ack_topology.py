"""The ack topology against the CS API emulator and the Kubernetes API emulator, driven by the
real SDK and ``kubernetes`` clients, with a controller loop that moves status forward and
injects the failures clusters have."""

from __future__ import annotations

import base64

import pytest

from servenest.errors import (
    CloudCredentialsError,
    CloudError,
    CloudInputError,
    ServeNestError,
    WeightsError,
)
from servenest.k8s import serving
from servenest.rehearsal.kubernetes import KubeController, KubeEmulator
from servenest.topology.ack import AckTopology, gpu_models_offering, pod_problem

DIGEST = "e" * 64
SYNC_LOG = f"servenest: synced 3 files to oss://x\nservenest-weights: files=3 bytes=65500000000 digest={DIGEST}\n"
KEY = "sk-ack-unit-test-7c2b"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def kube():
    with KubeEmulator() as emu:
        for i in range(2):
            emu.add_node(f"gpu-{i}", labels={serving.ACK_GPU_NAME_LABEL: "NVIDIA-H20"},
                         allocatable={serving.GPU_RESOURCE: "8"})
        emu.add_node("cpu-0", labels={})
        yield emu


@pytest.fixture
def controller(kube):
    ctl = KubeController(kube, job_result=lambda job: (0, SYNC_LOG), dataload_steps=2)
    with ctl.start(interval=0.01):
        yield ctl


@pytest.fixture
def ack(cloud, kube, make_spec):
    """A running cluster in the CS emulator whose kubeconfig reaches the Kubernetes emulator."""
    cloud.kubeconfig = kube.kubeconfig()
    cluster = cloud.add_cluster("c0123456789abcdef0", name="prod-gpu")

    def make(**overrides) -> AckTopology:
        return AckTopology(make_spec("ack", **overrides))

    make.cluster = cluster
    return make


def writes(kube: KubeEmulator, plural: str | None = None) -> list:
    return [c for c in kube.calls if c.method in WRITES and (plural is None or f"/{plural}" in c.path)]


# -- preflight: bad input is refused before anything is created -----------------------------------
def test_preflight_finds_the_gpu_nodes_and_creates_nothing(ack, kube):
    found = ack().preflight()
    assert found["cluster"] == "c0123456789abcdef0" and found["gpu_models"] == ["NVIDIA-H20"]
    assert found["kubernetes"].startswith("v1.31")
    assert writes(kube) == []


def test_an_unknown_cluster_is_refused(ack, kube):
    with pytest.raises(CloudInputError, match="c99999999999 does not exist"):
        ack(cloud={"cluster_id": "c99999999999"}).preflight()
    assert writes(kube) == []


@pytest.mark.parametrize("state", ["failed", "deleting", "initial"])
def test_a_cluster_not_running_is_refused(ack, cloud, kube, state):
    cloud.clusters["c0123456789abcdef0"]["detail"]["state"] = state
    with pytest.raises(CloudInputError, match=f"is '{state}'"):
        ack().preflight()
    assert writes(kube) == []


def test_an_expired_kubeconfig_is_a_credentials_error(ack, kube):
    kube.expire_token("emulator-token")
    with pytest.raises(CloudCredentialsError, match="expired or was revoked"):
        ack().preflight()


def test_a_gpu_kind_the_cluster_lacks_is_refused_naming_what_it_has(ack, kube):
    with pytest.raises(CloudInputError, match=r"no node offering 1 A10 GPU\(s\) \(found: NVIDIA-H20 x2\)"):
        ack(cloud={"gpu_kind": "A10"}).preflight()
    with pytest.raises(CloudInputError, match="no node offering 16 H20"):
        ack(cloud={"gpus_per_node": 16}).preflight()
    assert writes(kube) == []


def test_gpu_model_matching():
    nodes = [{"metadata": {"labels": {serving.ACK_GPU_NAME_LABEL: name}},
              "status": {"allocatable": {serving.GPU_RESOURCE: gpus}}}
             for name, gpus in [("NVIDIA-H20", "8"), ("NVIDIA-A10", "1"), ("Tesla-V100-SXM2-16GB", "8")]]
    assert gpu_models_offering(nodes, "H20", 8) == (["NVIDIA-H20"], {"NVIDIA-H20": 1, "NVIDIA-A10": 1,
                                                                     "Tesla-V100-SXM2-16GB": 1})
    assert gpu_models_offering(nodes, "A10", 2)[0] == []  # one A10 per node only
    assert gpu_models_offering(nodes, "H2", 1)[0] == []  # a whole word, not a substring


# -- weights ---------------------------------------------------------------------------------------
def test_stage_weights_syncs_then_warms_with_progress(ack, kube, controller, cloud):
    controller.dataload_steps = 30  # long enough that the watch sees Executing
    topo = ack()
    topo.preflight()
    seen: list[tuple[float, str]] = []
    staged = topo.stage_weights(lambda pct, msg: seen.append((pct, msg)))
    assert (staged.files, staged.digest, staged.reused) == (3, DIGEST, False)
    percents = [p for p, _ in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert any("DataLoad" in m and "Executing" in m for _, m in seen)
    ns = "llm-model"
    secret = kube.get("secrets", ns, "unit-test-oss")
    creds = topo.session.creds
    assert base64.b64decode(secret["data"]["akSecret"]).decode() == creds.access_key_secret
    assert all(creds.access_key_secret not in m for _, m in seen)
    assert kube.get("datasets", ns, "unit-test-weights")["status"]["phase"] == "Bound"
    [load] = kube.list("dataloads", ns)
    assert load["status"]["phase"] == "Complete"
    assert topo.state.resources["namespace_created"] is True


def test_a_second_staging_neither_syncs_nor_warms_again(ack, kube, controller):
    ack().stage_weights()
    jobs, loads = len(writes(kube, "jobs")), len(writes(kube, "dataloads"))
    again = ack().stage_weights()
    assert again.reused and again.digest == DIGEST
    assert len(writes(kube, "jobs")) == jobs and len(writes(kube, "dataloads")) == loads


def test_a_failed_dataload_fails_staging_and_a_rerun_warms_afresh(ack, kube, controller):
    controller.fail_dataloads = 1
    with pytest.raises(WeightsError, match="DataLoad .* Failed"):
        ack().stage_weights()
    staged = ack().stage_weights()
    assert not staged.reused
    [load] = kube.list("dataloads", "llm-model")
    assert load["status"]["phase"] == "Complete"


def test_a_failed_sync_job_reports_its_log(ack, kube, controller):
    controller.job_result = lambda job: (1, "servenest: modelscope download failed 3 times\n")
    with pytest.raises(WeightsError, match="modelscope download failed 3 times"):
        ack().stage_weights()
    assert kube.list("dataloads", "llm-model") == []  # nothing warmed from a bad sync


def test_staging_survives_watch_expiry_and_write_conflicts(ack, kube, controller):
    # A DataLoad slow enough (about 1 s) that staging must watch it: a fast one is already
    # Complete at the first read, and then no watch is opened for the faults to hit.
    controller.dataload_steps = 100
    kube.faults.gone_watches = 2
    kube.faults.conflicts = {"datasets": 1, "dataloads": 1}
    assert ack().stage_weights().digest == DIGEST
    assert kube.faults.gone_watches == 0 and not any(kube.faults.conflicts.values())  # all were hit
    conflicted = [c for c in kube.calls if c.status == 409]
    assert {c.path.split("/")[-2] for c in conflicted} == {"datasets", "dataloads"}


def test_oss_weights_skip_the_sync(ack, kube, controller):
    staged = ack(weights={"source": "oss"}).stage_weights()
    assert kube.list("jobs", "llm-model") == [] and staged.files == 0
    assert staged.location == "oss://servenest-models/llm-model/qwq-32b"


# -- launch, status, logs ----------------------------------------------------------------------------
def test_launch_serves_behind_the_private_load_balancer(ack, kube, controller):
    topo = ack()
    topo.preflight()
    topo.stage_weights()
    out = topo.launch(KEY)
    assert out["workload"] == "Deployment/unit-test"
    ep = topo.endpoint()
    assert ep.base_url.startswith("http://192.168.") and ep.base_url.endswith(":8000")
    dep = kube.get("deployments", "llm-model", "unit-test")
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["affinity"]["nodeAffinity"]  # pinned to the H20 nodes preflight found
    key = kube.get("secrets", "llm-model", "unit-test-api-key")
    assert base64.b64decode(key["data"]["api-key"]).decode() == KEY
    assert KEY not in str(dep)
    for _ in range(200):
        if topo.status().detail.startswith("Deployment unit-test: 1/1 pods ready"):
            break
        controller.step()
    assert topo.status().running


def test_a_relaunch_converges_on_one_deployment(ack, kube, controller):
    topo = ack()
    topo.stage_weights()
    topo.launch(KEY)
    first = kube.get("deployments", "llm-model", "unit-test")
    topo.launch(KEY + "-rotated")
    again = kube.get("deployments", "llm-model", "unit-test")
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["metadata"]["generation"] > first["metadata"]["generation"]  # pods roll for the new key
    assert len(kube.list("deployments", "llm-model")) == 1
    assert len(kube.list("services", "llm-model")) == 1


def test_public_access_adds_the_internet_load_balancer(ack, kube, controller):
    topo = ack(access={"public": True, "allowed_cidrs": ["0.0.0.0/0"]})
    topo.stage_weights()
    out = topo.launch(KEY)
    assert set(out["addresses"]) == {"private", "public"}
    assert topo.endpoint().base_url.startswith("http://47.96.") and topo.endpoint().public


def test_a_load_balancer_that_never_gets_an_address_fails_launch(ack, kube, controller):
    controller.lb_never_ready = {"unit-test-private"}
    topo = ack()
    topo.stage_weights()
    with pytest.raises(CloudError, match="unit-test-private got no load-balancer address"):
        topo.launch(KEY)


def test_a_crash_loop_is_a_dead_engine_with_its_last_logs(ack, kube, controller):
    controller.crash_loop = {"unit-test-"}
    controller.crash_log = f"ValueError: bad config (api_key='{KEY}')\nEngine core died"
    topo = ack()
    topo.stage_weights()
    topo.launch(KEY)
    for _ in range(50):
        status = topo.status()
        if not status.running:
            break
        controller.step()
    assert not status.running
    assert "CrashLoopBackOff" in status.detail or "3 restarts" in status.detail
    assert status.exit_code == 1
    logs = "\n".join(topo.logs(40))
    assert "Engine core died" in logs and KEY not in logs
    diag = topo.diagnostics()
    [pod_key] = [k for k in diag if k.startswith("pod ")]
    assert diag[pod_key]["phase"] == "Running"
    assert "unit-test-private" in " ".join(diag)


def test_runtime_state_counts_pod_restarts_and_restart_engine_replaces_the_pods(ack, kube, controller):
    controller.crash_loop = {"unit-test-"}
    topo = ack()
    topo.stage_weights()
    topo.launch(KEY)
    for _ in range(50):
        rs = topo.runtime_state()
        if rs.restarts >= 2:
            break
        controller.step()
    assert rs.restarts >= 2 and not rs.serving and not rs.gone
    controller.crash_loop = set()
    old = {p["metadata"]["name"] for p in topo._engine_pods()}
    assert sorted(topo.restart_engine(KEY)["pods_deleted"]) == sorted(old)
    for _ in range(50):
        controller.step()
        pods = topo._engine_pods()
        if pods and not {p["metadata"]["name"] for p in pods} & old and topo.status().running:
            break
    assert pods and not {p["metadata"]["name"] for p in pods} & old, "the Deployment made new pods"
    assert topo.runtime_state().restarts == 0


def test_restart_engine_without_pods_says_so(ack):
    with pytest.raises(ServeNestError, match="no engine pods to restart"):
        ack().restart_engine(KEY)


def test_pod_problem_reads_container_states():
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "engine", "restartCount": 1, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}
    assert "ImagePullBackOff" in pod_problem(pod)[0]
    pod["status"]["containerStatuses"][0] = {"name": "engine", "restartCount": 0, "state": {"running": {}}}
    assert pod_problem(pod) is None


def test_deepseek_runs_as_a_leader_and_worker(ack, kube, controller):
    topo = ack(model="deepseek-ai/DeepSeek-R1", cloud={"gpus_per_node": 8, "nodes": 2})
    topo.preflight()
    topo.stage_weights()
    topo.launch(KEY)
    for _ in range(200):
        if "2/2 pods ready" in topo.status().detail:
            break
        controller.step()
    assert "LeaderWorkerSet unit-test: 2/2 pods ready" in topo.status().detail
    pods = kube.list("pods", "llm-model", serving.engine_labels(topo.spec))
    roles = sorted((p["metadata"]["labels"].get(serving.ROLE_LABEL, "worker")) for p in pods)
    assert roles == ["serving", "worker"]


# -- teardown ----------------------------------------------------------------------------------------
def test_teardown_removes_everything_in_order_and_twice_is_fine(ack, kube, controller):
    topo = ack()
    topo.stage_weights()
    topo.launch(KEY)
    result = topo.teardown()
    assert result["namespace"] == "deleted"
    assert kube.get("namespaces", None, "llm-model") is None
    order = [c.path.split("/")[-2] for c in kube.calls if c.method == "DELETE"]
    kinds = [p for p in order if p in ("services", "deployments", "dataloads", "jindoruntimes", "datasets", "secrets")]
    assert kinds.index("services") < kinds.index("deployments") < kinds.index("dataloads") \
        < kinds.index("datasets") < kinds.index("secrets")
    assert ack().teardown()["deleted"] == []  # twice is fine


def test_teardown_keeps_a_namespace_other_deployments_use(ack, kube, controller):
    ack(name="other").stage_weights()
    topo = ack()
    topo.stage_weights()
    topo.state.resources["namespace_created"] = True
    result = topo.teardown()
    assert result["namespace"].startswith("kept")
    assert kube.get("datasets", "llm-model", "other-weights") is not None
    assert kube.get("datasets", "llm-model", "unit-test-weights") is None


def test_teardown_from_the_record_alone(ack, kube, controller):
    topo = ack()
    topo.stage_weights()
    topo.launch(KEY)
    state = topo.state
    state.spec = {**state.spec, "engine": {"kind": "tensorrt"}}  # no longer validates
    AckTopology.teardown_recorded(state)
    assert kube.list("deployments", "llm-model") == [] and kube.list("datasets", "llm-model") == []


# -- a cluster ServeNest creates through ROS ------------------------------------------------------------
def test_a_cluster_created_through_ros_is_priced_made_used_and_deleted(cloud, kube, controller, make_spec):
    cloud.kubeconfig = kube.kubeconfig()
    spec = make_spec("ack", cloud={"cluster_id": None, "zones": ["cn-hangzhou-h"],
                                   "instance_types": ["ecs.gn8v.4xlarge"]})
    topo = AckTopology(spec)
    assert "ALIYUN::CS::ManagedKubernetesCluster" in topo.plan()["ros_template"]
    assert topo.preflight()["cluster"] == "to be created by ROS"
    assert topo.estimate().hourly > 0 and not cloud.clusters  # priced, nothing created
    out = topo.provision()
    [cid] = cloud.clusters
    assert out["cluster"] == cid and topo.state.resources["cluster_created"] is True
    topo.stage_weights()
    topo.launch(KEY)
    # A crashed run's rerun adopts the stack instead of creating a second one.
    AckTopology(spec).provision()
    assert len(cloud.calls_for("CreateStack")) == 1
    result = AckTopology(spec).teardown()
    assert len(result["stacks_deleted"]) == 1 and not cloud.clusters
    deletes = [c for c in kube.calls if c.method == "DELETE"]
    assert deletes  # the cluster's objects (and load balancers) went before the cluster


def test_creating_a_cluster_needs_a_zone_and_types(spec_dict):
    from servenest.errors import SpecError
    from servenest.spec import load_spec_data

    with pytest.raises(SpecError, match="cloud.instance_types and cloud.zones"):
        load_spec_data(spec_dict("ack", cloud={"cluster_id": None}))


# -- autoscaling -------------------------------------------------------------------------------------
def test_an_autoscaled_new_cluster_is_priced_at_its_ceiling(cloud, make_spec):
    c = {"cluster_id": None, "zones": ["cn-hangzhou-h"], "instance_types": ["ecs.gn8v.4xlarge"]}
    fixed = AckTopology(make_spec("ack", cloud=c)).estimate()
    scaled = AckTopology(make_spec("ack", cloud=c, replicas={"min": 1, "max": 3})).estimate()
    node = cloud.hourly_price("ecs.gn8v.4xlarge")
    # The budget check sees what the autoscaler may reach: two more nodes than one replica needs.
    assert scaled.hourly == pytest.approx(fixed.hourly + 2 * node)
    assert "1-3 replicas" in scaled.placement and f"{fixed.hourly:.2f}" in scaled.note
    template = AckTopology(make_spec("ack", cloud=c, replicas={"min": 1, "max": 3})).cluster_template
    assert "MaxInstances: 3" in template and "Count: 1" in template
    assert "ack-arms-prometheus" in template  # the PodMonitor CRD comes with Managed Prometheus


def test_a_created_cluster_without_the_metrics_adapter_yet_still_provisions(cloud, kube, controller, make_spec):
    cloud.kubeconfig = kube.kubeconfig()
    kube.uninstall("custom.metrics.k8s.io/v1beta1")
    spec = make_spec("ack", replicas={"max": 3}, cloud={
        "cluster_id": None, "zones": ["cn-hangzhou-h"], "instance_types": ["ecs.gn8v.4xlarge"]})
    topo = AckTopology(spec)
    assert topo.provision()["autoscaler"] == "hpa"  # the adapter is set up once the cluster exists
    AckTopology(spec).teardown()


SCALED = {"replicas": {"min": 1, "max": 3}, "autoscaling": {"scale_down_window_s": 0}}


def wait_for(check, timeout_s: float = 10.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


@pytest.mark.parametrize(("uninstalled", "autoscaling", "message"), [
    (("podmonitors",), {}, "PodMonitor CRD"),
    (("custom.metrics.k8s.io/v1beta1",), {}, "ack-alibaba-cloud-metrics-adapter"),
    (("scaledobjects",), {"autoscaler": "keda", "prometheus_url": "http://prom:9090"}, "KEDA"),
])
def test_preflight_refuses_autoscaling_the_cluster_cannot_do(ack, kube, uninstalled, autoscaling, message):
    kube.uninstall(*uninstalled)
    with pytest.raises(CloudInputError, match=message):
        ack(replicas={"max": 3}, autoscaling=autoscaling).preflight()
    assert writes(kube) == []


def test_preflight_picks_keda_where_the_cluster_has_it(ack, kube):
    keda = {"prometheus_url": "http://prom:9090"}
    assert ack(replicas={"max": 3}, autoscaling=keda).preflight()["autoscaler"] == "keda"
    assert ack(replicas={"max": 3}).preflight()["autoscaler"] == "hpa"  # no Prometheus URL for KEDA
    kube.uninstall("scaledobjects")
    topo = ack(replicas={"max": 3}, autoscaling=keda)
    assert topo.preflight()["autoscaler"] == "hpa"
    assert "HorizontalPodAutoscaler" in [o["kind"] for o in topo.plan()["kubernetes"]]
    assert "autoscaler" not in ack().preflight()  # fixed replicas: nothing to choose


def test_the_hpa_scales_the_launched_deployment_with_the_queue_and_a_relaunch_keeps_its_count(
        ack, kube, controller):
    topo = ack(**SCALED)
    topo.preflight()
    topo.stage_weights()
    topo.launch(KEY)
    assert kube.get("podmonitors", "llm-model", "unit-test-engine") is not None
    assert kube.get("horizontalpodautoscalers", "llm-model", "unit-test")["spec"]["maxReplicas"] == 3

    def replicas() -> int:
        return kube.get("deployments", "llm-model", "unit-test")["spec"]["replicas"]

    wait_for(lambda: topo.status().detail.startswith("Deployment unit-test: 1/1 pods ready"))
    kube.set_pod_metric("llm-model", "vllm:num_requests_waiting",
                        selector=serving.serving_selector(topo.spec), value=12)
    wait_for(lambda: replicas() == 3)
    # The new replicas mount the same warmed dataset and join the load balancer once ready.
    wait_for(lambda: topo.status().detail.startswith("Deployment unit-test: 3/3 pods ready"))
    pods = kube.list("pods", "llm-model", serving.engine_labels(topo.spec))
    assert {v["persistentVolumeClaim"]["claimName"] for p in pods for v in p["spec"]["volumes"]
            if "persistentVolumeClaim" in v} == {"unit-test-weights"}
    topo.launch(KEY)  # a relaunch under load does not drop back to replicas.min
    assert replicas() == 3
    kube.set_pod_metric("llm-model", "vllm:num_requests_waiting",
                        selector=serving.serving_selector(topo.spec), value=0)
    wait_for(lambda: replicas() == 1)


def test_teardown_removes_the_autoscaler_before_the_workload(ack, kube, controller):
    topo = ack(**SCALED)
    topo.preflight()
    topo.stage_weights()
    topo.launch(KEY)
    topo.teardown()
    order = [c.path.split("/")[-2] for c in kube.calls if c.method == "DELETE"]
    assert order.index("horizontalpodautoscalers") < order.index("podmonitors") < order.index("deployments")
    assert kube.list("horizontalpodautoscalers", "llm-model") == [] and kube.list("podmonitors", "llm-model") == []


def test_a_keda_scaled_object_scales_the_deployment_through_prometheus(ack, kube, controller):
    topo = ack(replicas={"min": 1, "max": 3}, autoscaling={
        "autoscaler": "keda", "prometheus_url": "http://prom:9090", "scale_down_window_s": 0})
    assert topo.preflight()["autoscaler"] == "keda"
    topo.stage_weights()
    topo.launch(KEY)
    assert kube.get("scaledobjects", "llm-model", "unit-test") is not None
    assert kube.get("horizontalpodautoscalers", "llm-model", "unit-test") is None  # KEDA makes its own
    wait_for(lambda: kube.get("horizontalpodautoscalers", "llm-model", "keda-hpa-unit-test"))
    wait_for(lambda: topo.status().detail.startswith("Deployment unit-test: 1/1 pods ready"))
    kube.set_pod_metric("llm-model", "vllm:num_requests_waiting",
                        selector=serving.serving_selector(topo.spec), total=14)
    wait_for(lambda: kube.get("deployments", "llm-model", "unit-test")["spec"]["replicas"] == 3)
    topo.teardown()
    assert kube.list("scaledobjects", "llm-model") == [] and kube.list("horizontalpodautoscalers", "llm-model") == []
