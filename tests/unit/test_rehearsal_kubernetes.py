"""The Kubernetes emulator and its controller, driven through the REAL ``kubernetes`` client."""

from __future__ import annotations

import json
import re
import threading

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from servenest.rehearsal.kubernetes import KubeController, KubeEmulator

FLUID = ("data.fluid.io", "v1alpha1")
LWS = ("leaderworkerset.x-k8s.io", "v1")


@pytest.fixture
def emu():
    with KubeEmulator() as e:
        yield e


@pytest.fixture
def api(emu):
    c = config.new_client_from_config_dict(yaml.safe_load(emu.kubeconfig()))
    yield c
    c.close()


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
def custom(api):
    return client.CustomObjectsApi(api)


def _ready(p) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def fails(fn, *args, **kwargs) -> tuple[int, dict]:
    """(HTTP status, Status body) of a call that must fail."""
    with pytest.raises(ApiException) as info:
        fn(*args, **kwargs)
    return info.value.status, status_of(info.value)


def settle(ctl: KubeController, done, steps: int = 12):
    """Step the controller until ``done()`` is truthy; returns its value."""
    for _ in range(steps):
        ctl.step()
        if value := done():
            return value
    raise AssertionError(f"not settled after {steps} steps")


def pod(name: str, labels: dict | None = None, image: str = "vllm:latest") -> dict:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": image}]}}


def configmap(name: str, **data: str) -> dict:
    return {"metadata": {"name": name}, "data": data}


# ------------------------------------------------------------------ API semantics


def test_create_get_list_and_errors(emu, core):
    created = core.create_namespaced_config_map("default", configmap("cfg", a="1"))
    assert created.metadata.uid and int(created.metadata.resource_version) > 0
    assert created.metadata.namespace == "default" and created.metadata.generation == 1
    assert core.read_namespaced_config_map("cfg", "default").data == {"a": "1"}
    names = [c.metadata.name for c in core.list_namespaced_config_map("default").items]
    assert names == ["cfg"]
    assert core.list_config_map_for_all_namespaces().items[0].metadata.name == "cfg"

    code, body = fails(core.create_namespaced_config_map, "default", configmap("cfg"))
    assert (code, body["reason"], body["details"]["name"]) == (409, "AlreadyExists", "cfg")
    code, body = fails(core.read_namespaced_config_map, "nope", "default")
    assert (code, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    assert body["message"] == 'configmaps "nope" not found'
    code, body = fails(core.create_namespaced_pod, "default", {"metadata": {"name": "Bad_Name"},
                                                               "spec": {"containers": []}})
    assert (code, body["reason"]) == (422, "Invalid")

    generated = core.create_namespaced_config_map("default", {"metadata": {"generateName": "g-"}})
    assert re.fullmatch(r"g-[a-z0-9]{5}", generated.metadata.name)
    dry = core.create_namespaced_config_map("default", configmap("dry"), dry_run="All")
    assert dry.metadata.name == "dry" and dry.metadata.resource_version is None
    assert fails(core.read_namespaced_config_map, "dry", "default")[0] == 404
    version = client.VersionApi(core.api_client).get_code()
    assert (version.git_version, version.minor) == ("v1.31.1-aliyun.1", "31")
    assert [(c.method, c.status) for c in emu.calls[:2]] == [("POST", 201), ("GET", 200)]


def test_create_in_missing_or_terminating_namespace(emu, core):
    code, body = fails(core.create_namespaced_config_map, "nope", configmap("x"))
    assert (code, body["reason"]) == (404, "NotFound")
    assert body["message"] == 'namespaces "nope" not found'
    core.create_namespace({"metadata": {"name": "gone"}})
    core.delete_namespace("gone")
    assert core.read_namespace("gone").status.phase == "Terminating"
    code, body = fails(core.create_namespaced_config_map, "gone", configmap("x"))
    assert (code, body["reason"]) == (403, "Forbidden")
    assert "being terminated" in body["message"]


def test_replace_checks_resource_version_and_bumps_generation(core, api):
    apps = client.AppsV1Api(api)
    dep = apps.create_namespaced_deployment("default", deployment("web"))
    stale = dep.metadata.resource_version
    apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"x": "1"}}})
    body = apps.read_namespaced_deployment("web", "default").to_dict()
    assert body["spec"]["replicas"] == 1  # defaulted by the API

    body["metadata"]["resource_version"] = stale
    body["spec"]["replicas"] = 3
    code, err = fails(apps.replace_namespaced_deployment, "web", "default", body)
    assert (code, err["reason"]) == (409, "Conflict")
    assert "the object has been modified" in err["message"]

    fresh = apps.read_namespaced_deployment("web", "default")
    fresh.spec.replicas = 3
    fresh.status = client.V1DeploymentStatus(ready_replicas=7)  # ignored: /status owns it
    out = apps.replace_namespaced_deployment("web", "default", fresh)
    assert int(out.metadata.resource_version) > int(fresh.metadata.resource_version)
    assert (out.metadata.generation, out.spec.replicas, out.status.ready_replicas) == (2, 3, None)
    assert out.metadata.uid == dep.metadata.uid
    same = apps.replace_namespaced_deployment("web", "default", out)  # no change: no new version
    assert same.metadata.resource_version == out.metadata.resource_version
    code, _ = fails(apps.replace_namespaced_deployment, "nope", "default", deployment("nope"))
    assert code == 404


def test_merge_and_json_patch(core, custom):
    core.create_namespaced_config_map("default", {"metadata": {"name": "p", "labels": {
        "a": "1", "b": "2"}}, "data": {"k": "v"}})
    out = core.patch_namespaced_config_map("p", "default", {"metadata": {"labels": {
        "a": None, "c": "3"}}, "data": {"k2": "v2"}})
    assert out.metadata.labels == {"b": "2", "c": "3"} and out.data == {"k": "v", "k2": "v2"}

    custom.create_namespaced_custom_object(*FLUID, "default", "datasets", dataset("ds"))
    ds = custom.patch_namespaced_custom_object(*FLUID, "default", "datasets", "ds",
                                               {"spec": {"mounts": None}})
    assert "mounts" not in ds["spec"] and ds["metadata"]["generation"] == 2

    ops = [{"op": "test", "path": "/data/k", "value": "v"},
           {"op": "replace", "path": "/data/k", "value": "w"},
           {"op": "remove", "path": "/data/k2"}]
    out = core.patch_namespaced_config_map("p", "default", ops,
                                           _content_type="application/json-patch+json")
    assert out.data == {"k": "w"}
    code, body = fails(core.patch_namespaced_config_map, "p", "default",
                       [{"op": "test", "path": "/data/k", "value": "nope"}],
                       _content_type="application/json-patch+json")
    assert (code, body["reason"]) == (422, "Invalid")
    code, _ = fails(core.patch_namespaced_config_map, "missing", "default", {"data": {}})
    assert code == 404


def test_server_side_apply_creates_then_merges(emu, api, custom):
    body = dataset("applied")
    body.update(apiVersion="data.fluid.io/v1alpha1", kind="Dataset")
    _, code, _ = custom.patch_namespaced_custom_object_with_http_info(
        *FLUID, "default", "datasets", "applied", body, field_manager="servenest",
        _content_type="application/apply-patch+yaml")
    assert code == 201
    # A YAML body through the raw ApiClient, as `kubectl apply --server-side` sends it.
    text = yaml.safe_dump({"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
                           "metadata": {"name": "applied", "labels": {"tier": "gold"}}})
    path = "/apis/data.fluid.io/v1alpha1/namespaces/default/datasets/applied"

    def apply(query):
        request = api.param_serialize(
            "PATCH", path, query_params=query, body=text, auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/apply-patch+yaml",
                           "Accept": "application/json"})
        response = api.call_api(*request)
        return response.status, json.loads(response.read())

    status, obj = apply([("fieldManager", "servenest")])
    assert status == 200 and obj["metadata"]["labels"] == {"tier": "gold"}
    assert obj["spec"]["mounts"][0]["mountPoint"] == "oss://bucket/models"  # merged, not replaced
    status, obj = apply([])
    assert (status, obj["reason"]) == (400, "BadRequest") and "fieldManager" in obj["message"]
    assert emu.calls[-1].content_type == "application/apply-patch+yaml"


def test_label_and_field_selectors(core):
    for name, labels in [("a", {"app": "web", "tier": "x"}), ("b", {"app": "web"}),
                         ("c", {"app": "db", "tier": "y"})]:
        core.create_namespaced_pod("default", pod(name, labels))

    def names(**kw):
        return [p.metadata.name for p in core.list_namespaced_pod("default", **kw).items]

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier") == ["a"]
    assert names(label_selector="app!=web") == ["c"]
    assert names(label_selector="!tier") == ["b"]
    assert names(label_selector="tier in (x, y)") == ["a", "c"]
    assert names(label_selector="app=web,tier notin (x)") == ["b"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="status.phase=Pending,metadata.name!=a") == ["b", "c"]
    code, _ = fails(core.list_namespaced_pod, "default", label_selector="a in b")
    assert code == 400


def test_expired_token_gets_401(emu):
    emu.add_token("short-lived")
    api = config.new_client_from_config_dict(yaml.safe_load(emu.kubeconfig("short-lived")))
    core = client.CoreV1Api(api)
    assert core.read_namespace("default").status.phase == "Active"
    emu.expire_token("short-lived")
    code, body = fails(core.read_namespace, "default")
    assert (code, body["reason"]) == (401, "Unauthorized")
    wrong = client.Configuration()  # not the process-wide default: other tests use that
    config.load_kube_config_from_dict(yaml.safe_load(emu.kubeconfig("wrong")),
                                      client_configuration=wrong)
    assert fails(client.CoreV1Api(client.ApiClient(wrong)).list_namespace)[0] == 401


def test_secret_string_data_is_stored_as_data(core):
    core.create_namespaced_secret("default", {"metadata": {"name": "oss-secret"},
                                              "stringData": {"ak": "id"}})
    secret = core.read_namespaced_secret("oss-secret", "default")
    assert secret.data == {"ak": "aWQ="} and secret.string_data is None


def test_faults(emu, core):
    emu.faults.conflicts["configmaps"] = 1
    code, body = fails(core.create_namespaced_config_map, "default", configmap("c"))
    assert (code, body["reason"]) == (409, "Conflict")
    core.create_namespaced_config_map("default", configmap("c"))  # the next one goes through
    emu.faults.server_errors["configmaps"] = 1
    code, body = fails(core.read_namespaced_config_map, "c", "default")
    assert (code, body["reason"]) == (500, "InternalError")
    emu.faults.unavailable = 1
    assert fails(core.list_namespace)[0] == 503
    assert core.read_namespaced_config_map("c", "default").metadata.name == "c"


# ------------------------------------------------------------------ controllers


def deployment(name: str, image: str = "vllm:1") -> dict:
    return {"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "engine", "image": image}]}}}}


def test_deployment_becomes_ready_then_rolls_and_is_collected(emu, api, core):
    running: list[dict] = []
    ctl = KubeController(emu, pod_ip=lambda p: "10.9.0.7", on_pod_running=running.append)
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", deployment("web"))
    code, body = fails(apps.create_namespaced_deployment, "default", {
        **deployment("bad"), "spec": {**deployment("bad")["spec"], "selector": {
            "matchLabels": {"app": "other"}}}})
    assert (code, body["reason"]) == (422, "Invalid")

    status = settle(ctl, lambda: apps.read_namespaced_deployment_status("web", "default").status
                    if apps.read_namespaced_deployment("web", "default").status.ready_replicas
                    else None)
    assert (status.ready_replicas, status.available_replicas) == (1, 1)
    assert status.observed_generation == 1
    assert {c.type: c.status for c in status.conditions}["Available"] == "True"
    [first] = core.list_namespaced_pod("default", label_selector="app=web").items
    assert re.fullmatch(r"web-[0-9a-f]{10}-[a-z0-9]{5}", first.metadata.name)
    owner = first.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Deployment", "web", True)
    assert first.status.pod_ip == "10.9.0.7" and first.status.container_statuses[0].ready
    assert first.status.host_ip == first.status.pod_ip  # no nodes: ACS-style sandbox pods
    assert [p["metadata"]["name"] for p in running] == [first.metadata.name]

    apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "engine", "image": "vllm:2"}]}}}})
    ctl.step()
    pods = {p.metadata.name: p for p in core.list_namespaced_pod("default").items}
    assert pods[first.metadata.name].metadata.deletion_timestamp is not None
    settle(ctl, lambda: len(core.list_namespaced_pod("default").items) == 1
           and apps.read_namespaced_deployment("web", "default").status.ready_replicas == 1)
    [second] = core.list_namespaced_pod("default").items
    assert second.spec.containers[0].image == "vllm:2"
    assert second.metadata.name != first.metadata.name
    assert len(running) == 2

    apps.delete_namespaced_deployment("web", "default")
    settle(ctl, lambda: not core.list_namespaced_pod("default").items)  # garbage collected


def test_leaderworkerset_makes_groups_with_lws_env(emu, custom, core):
    ctl = KubeController(emu)
    template = {"spec": {"containers": [{"name": "vllm", "image": "vllm:1",
                                         "env": [{"name": "KEEP", "value": "1"}]}]}}
    custom.create_namespaced_custom_object(*LWS, "default", "leaderworkersets", {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
        "metadata": {"name": "qwen"},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": template}}})
    status = settle(ctl, lambda: (custom.get_namespaced_custom_object(
        *LWS, "default", "leaderworkersets", "qwen").get("status") or {}).get("readyReplicas"))
    assert status == 1
    pods = {p.metadata.name: p for p in core.list_namespaced_pod("default").items}
    assert sorted(pods) == ["qwen-0", "qwen-0-1"]
    worker = pods["qwen-0-1"]
    assert worker.metadata.labels["leaderworkerset.sigs.k8s.io/worker-index"] == "1"
    assert worker.metadata.labels["leaderworkerset.sigs.k8s.io/group-index"] == "0"
    env = {e.name: e.value for e in worker.spec.containers[0].env}
    assert env == {"KEEP": "1", "LWS_LEADER_ADDRESS": "qwen-0.qwen.default",
                   "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}
    leader_env = {e.name: e.value for e in pods["qwen-0"].spec.containers[0].env}
    assert leader_env["LWS_WORKER_INDEX"] == "0"

    custom.patch_namespaced_custom_object(*LWS, "default", "leaderworkersets", "qwen", {
        "spec": {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": [
            {"name": "vllm", "image": "vllm:2"}]}}}}})
    ctl.step()  # the old group is terminating; same names, so new pods wait for it to go
    assert core.read_namespaced_pod("qwen-0", "default").metadata.deletion_timestamp
    settle(ctl, lambda: {p.spec.containers[0].image for p in core.list_namespaced_pod(
        "default").items if _ready(p)} == {"vllm:2"} and len(core.list_namespaced_pod(
            "default").items) == 2)


def job(name: str, backoff: int | None = None) -> dict:
    spec = {"template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "stage", "image": "stage:1"}]}}}
    if backoff is not None:
        spec["backoffLimit"] = backoff
    return {"metadata": {"name": name}, "spec": spec}


def test_job_success_and_backoff_failure(emu, api, core):
    outcomes = {"ok": (0, "staged 3 files\n"), "bad": (2, "no such bucket\n")}
    ctl = KubeController(emu, job_result=lambda j: outcomes[j["metadata"]["name"]])
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job("default", job("ok"))
    batch.create_namespaced_job("default", job("bad", backoff=1))
    code, _ = fails(batch.create_namespaced_job, "default", {
        "metadata": {"name": "x"}, "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}})
    assert code == 422  # a Job's pods need restartPolicy Never or OnFailure

    def finished(name):
        conds = batch.read_namespaced_job(name, "default").status.conditions or []
        return {c.type: c for c in conds if c.status == "True"}

    ok = settle(ctl, lambda: finished("ok"))
    assert "Complete" in ok
    status = batch.read_namespaced_job_status("ok", "default").status
    assert (status.succeeded, status.failed, status.completion_time is not None) == (1, None, True)
    [done] = core.list_namespaced_pod("default", label_selector="job-name=ok").items
    assert done.status.phase == "Succeeded"
    assert done.metadata.labels["batch.kubernetes.io/job-name"] == "ok"
    assert core.read_namespaced_pod_log(done.metadata.name, "default") == "staged 3 files\n"

    bad = settle(ctl, lambda: finished("bad"))
    assert bad["Failed"].reason == "BackoffLimitExceeded"
    assert batch.read_namespaced_job("bad", "default").status.failed == 2  # backoffLimit 1 + 1
    pods = core.list_namespaced_pod("default", label_selector="job-name=bad").items
    assert [p.status.phase for p in pods] == ["Failed", "Failed"]


def dataset(name: str) -> dict:
    return {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": name},
            "spec": {"mounts": [{"mountPoint": "oss://bucket/models", "name": "models"}]}}


def fluid_objects(custom, name: str) -> None:
    custom.create_namespaced_custom_object(*FLUID, "default", "datasets", dataset(name))
    custom.create_namespaced_custom_object(*FLUID, "default", "jindoruntimes", {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "JindoRuntime",
        "metadata": {"name": name}, "spec": {"replicas": 2}})
    custom.create_namespaced_custom_object(*FLUID, "default", "dataloads", {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad",
        "metadata": {"name": f"{name}-warmup"},
        "spec": {"dataset": {"name": name, "namespace": "default"}}})


def test_dataload_goes_pending_executing_complete_or_failed(emu, custom, core):
    ctl = KubeController(emu, dataload_steps=2)
    fluid_objects(custom, "w")

    def phase(name):
        return (custom.get_namespaced_custom_object(
            *FLUID, "default", "dataloads", name).get("status") or {}).get("phase")

    seen = []
    for _ in range(6):
        ctl.step()
        seen.append(phase("w-warmup"))
    assert seen == ["Pending", "Executing", "Executing", "Complete", "Complete", "Complete"]
    load = custom.get_namespaced_custom_object(*FLUID, "default", "dataloads", "w-warmup")
    assert load["status"]["conditions"][0]["type"] == "Complete"
    assert re.fullmatch(r"\d+s", load["status"]["duration"])
    ds = custom.get_namespaced_custom_object(*FLUID, "default", "datasets", "w")
    assert ds["status"]["phase"] == "Bound"
    assert core.read_namespaced_persistent_volume_claim("w", "default").status.phase == "Bound"
    runtime = custom.get_namespaced_custom_object(*FLUID, "default", "jindoruntimes", "w")
    assert runtime["status"]["workerPhase"] == "Ready"

    ctl.fail_dataloads = 1
    fluid_objects(custom, "f")
    settle(ctl, lambda: phase("f-warmup") in ("Complete", "Failed"))
    failed = custom.get_namespaced_custom_object(*FLUID, "default", "dataloads", "f-warmup")
    assert failed["status"]["phase"] == "Failed" and ctl.fail_dataloads == 0
    assert failed["status"]["conditions"][0]["message"].startswith("DataLoad failed: ")


def test_dataload_waits_for_its_dataset(emu, custom):
    ctl = KubeController(emu)
    custom.create_namespaced_custom_object(*FLUID, "default", "datasets", dataset("lonely"))
    custom.create_namespaced_custom_object(*FLUID, "default", "dataloads", {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad",
        "metadata": {"name": "l"}, "spec": {"dataset": {"name": "lonely"}}})
    for _ in range(4):
        ctl.step()
    load = custom.get_namespaced_custom_object(*FLUID, "default", "dataloads", "l")
    assert load["status"]["phase"] == "Pending"  # no JindoRuntime: the Dataset never binds


def test_load_balancer_addresses(emu, core):
    ctl = KubeController(emu, lb_steps=2)
    ctl.lb_never_ready.add("stuck")
    annotation = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type"
    for name, kind in [("public", None), ("private", "intranet"), ("stuck", None)]:
        meta = {"name": name, "annotations": {annotation: kind} if kind else {}}
        core.create_namespaced_service("default", {"metadata": meta, "spec": {
            "type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 8000}]}})
    svc = core.read_namespaced_service("public", "default")
    assert re.fullmatch(r"10\.96\.\d+\.\d+", svc.spec.cluster_ip)
    assert svc.spec.ports[0].node_port >= 30000 and svc.spec.ports[0].target_port == 8000
    ctl.step()
    assert core.read_namespaced_service("public", "default").status.load_balancer.ingress is None
    ctl.step()

    def ip(name):
        ingress = core.read_namespaced_service(name, "default").status.load_balancer.ingress
        return ingress[0].ip if ingress else None

    assert ip("public").startswith("47.96.") and ip("private").startswith("192.168.")
    for _ in range(3):
        ctl.step()
    assert ip("stuck") is None


def test_crash_loop_and_unschedulable(emu, core):
    ctl = KubeController(emu)
    ctl.crash_loop.add("crashy")
    ctl.crash_log = "CUDA error: out of memory\n"
    ctl.unschedulable.add("big")
    for name in ("crashy-0", "big-0", "fine"):
        core.create_namespaced_pod("default", pod(name))
    once = pod("crashy-once")
    once["spec"]["restartPolicy"] = "Never"  # never restarted, so never a crash loop
    core.create_namespaced_pod("default", once)
    code, body = fails(core.read_namespaced_pod_log, "fine", "default")
    assert code == 400 and "waiting to start" in body["message"]
    for _ in range(3):
        ctl.step()
    crashy = core.read_namespaced_pod("crashy-0", "default")
    cs = crashy.status.container_statuses[0]
    assert crashy.status.phase == "Running" and not cs.ready and cs.restart_count == 3
    assert cs.state.waiting.reason == "CrashLoopBackOff"
    assert cs.last_state.terminated.exit_code == 1
    log = core.read_namespaced_pod_log("crashy-0", "default", previous=True)
    assert log == "CUDA error: out of memory\n"
    assert core.read_namespaced_pod("crashy-once", "default").status.container_statuses[0].ready
    code, body = fails(core.read_namespaced_pod_log, "fine", "default", previous=True)
    assert code == 400 and "previous terminated container" in body["message"]

    big = core.read_namespaced_pod("big-0", "default").status
    assert big.phase == "Pending"
    [cond] = big.conditions
    assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
    assert "insufficient nvidia.com/gpu" in cond.message
    events = core.list_namespaced_event("default", field_selector="reason=FailedScheduling")
    assert [e.involved_object.name for e in events.items] == ["big-0"]

    emu.set_pod_log("default", "fine", "line1\nline2\nline3\n")
    assert core.read_namespaced_pod_log("fine", "default", tail_lines=2) == "line2\nline3\n"

    ctl.crash_loop.clear()  # fixed: the next restart stays up
    ctl.step()
    cs = core.read_namespaced_pod("crashy-0", "default").status.container_statuses[0]
    assert cs.ready and cs.restart_count == 3 and cs.state.running is not None


def test_pod_deletion_takes_a_step(emu, core):
    deleted: list[str] = []
    ctl = KubeController(emu, on_pod_deleted=lambda p: deleted.append(p["metadata"]["name"]))
    emu.add_node("gpu-1", {"aliyun.accelerator/nvidia_name": "A10"}, {"nvidia.com/gpu": "8"})
    [node] = core.list_node().items
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    core.create_namespaced_pod("default", pod("p"))
    ctl.step()
    running = core.read_namespaced_pod("p", "default")
    assert running.spec.node_name == "gpu-1" and running.status.host_ip == "192.168.0.10"
    core.delete_namespaced_pod("p", "default")
    again = core.delete_namespaced_pod("p", "default")  # already terminating: 200 again
    assert again.metadata.deletion_timestamp is not None
    assert core.read_namespaced_pod("p", "default").metadata.deletion_timestamp is not None
    assert deleted == []
    ctl.step()
    assert fails(core.read_namespaced_pod, "p", "default")[0] == 404
    assert deleted == ["p"]


def test_namespace_deletion_cascades(emu, api, core):
    ctl = KubeController(emu)
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_config_map("team", configmap("cfg"))
    client.AppsV1Api(api).create_namespaced_deployment("team", deployment("web"))
    ctl.step()
    assert len(core.list_namespaced_pod("team").items) == 1
    core.delete_namespace("team")
    ctl.step()
    assert core.list_namespaced_config_map("team").items == []
    assert core.read_namespace("team").status.phase == "Terminating"
    settle(ctl, lambda: fails(core.read_namespace, "team")[0] == 404)
    assert core.list_namespaced_pod("team").items == []


# ------------------------------------------------------------------ watches


def test_watch_sees_dataload_phases_in_order(emu, custom):
    start = custom.list_namespaced_custom_object(*FLUID, "default", "dataloads")
    fluid_objects(custom, "m")
    phases = []
    with KubeController(emu, dataload_steps=1).start(interval=0.01) as ctl:
        w = watch.Watch()
        for event in w.stream(custom.list_namespaced_custom_object, *FLUID, "default",
                              "dataloads", resource_version=start["metadata"]["resourceVersion"],
                              timeout_seconds=10):
            phase = (event["object"].get("status") or {}).get("phase")
            if not phases or phases[-1] != phase:
                phases.append(phase)
            if phase == "Complete":
                w.stop()
    assert phases == [None, "Pending", "Executing", "Complete"] and not ctl.errors


def test_watch_pods_with_the_typed_client(emu, core):
    ctl = KubeController(emu)
    core.create_namespaced_pod("default", pod("old"))
    events = []
    w = watch.Watch()

    def act():
        core.create_namespaced_pod("default", pod("w", {"app": "w"}))
        ctl.step()
        core.delete_namespaced_pod("w", "default")
        ctl.step()

    timer = threading.Timer(0.2, act)
    timer.start()
    for event in w.stream(core.list_namespaced_pod, "default", label_selector="app=w",
                          timeout_seconds=10):
        events.append((event["type"], event["object"].metadata.name, event["object"].status.phase))
        if event["type"] == "DELETED":
            w.stop()
    timer.join()
    assert events[0] == ("ADDED", "w", "Pending")
    assert ("MODIFIED", "w", "Running") in events and events[-1][0] == "DELETED"
    assert all(name == "w" for _, name, _ in events)  # the selector kept "old" out


def test_watch_410_gone(emu, core):
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    emu.faults.gone_watches = 1
    with pytest.raises(ApiException) as info:  # with a timeout, Watch does not retry a 410
        list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                  resource_version=rv, timeout_seconds=2))
    assert info.value.status == 410 and "too old resource version" in info.value.reason

    # Without one it re-watches once from the same version, then gives up on a second 410.
    core.create_namespaced_config_map("default", configmap("after"))
    emu.faults.gone_watches = 1
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=rv):
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "after")
        w.stop()
    emu.faults.gone_watches = 2
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                  resource_version=rv))
    assert info.value.status == 410


def test_watch_older_than_the_history_is_gone():
    with KubeEmulator(history=3) as small:
        core = client.CoreV1Api(config.new_client_from_config_dict(
            yaml.safe_load(small.kubeconfig())))
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        for i in range(4):
            core.create_namespaced_config_map("default", configmap(f"c{i}"))
        with pytest.raises(ApiException) as info:
            list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=rv, timeout_seconds=2))
        assert info.value.status == 410
        recent = str(int(rv) + 2)  # still in the history: replayed, then the stream times out
        events = list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                           resource_version=recent, timeout_seconds=1))
        assert [e["object"].metadata.name for e in events] == ["c2", "c3"]


# ------------------------------------------------------------------ autoscaling

WAITING = "vllm:num_requests_waiting"


def hpa(target: dict, lo: int, hi: int, average: str, down_window: int = 0) -> dict:
    return {"metadata": {"name": target["name"]}, "spec": {
        "scaleTargetRef": target, "minReplicas": lo, "maxReplicas": hi,
        "metrics": [{"type": "Pods", "pods": {"metric": {"name": WAITING},
                                              "target": {"type": "AverageValue", "averageValue": average}}}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": down_window}}}}


def set_queue(emu: KubeEmulator, selector: dict, **load) -> None:
    """Through the emulator's control endpoint, as a test or a tool outside the process would."""
    import httpx

    body = {"namespace": "default", "metric": WAITING, "selector": selector, **load}
    httpx.post(f"{emu.url}/__emulator/pod-metrics", json=body, trust_env=False).raise_for_status()


def test_hpa_scales_a_deployment_up_when_the_queue_crosses_the_target_and_back_down(emu, api, core):
    ctl = KubeController(emu)
    apps, scaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    apps.create_namespaced_deployment("default", deployment("web"))
    scaling.create_namespaced_horizontal_pod_autoscaler("default", hpa(
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, 1, 4, "5"))
    settle(ctl, lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas)

    def replicas() -> int:
        return apps.read_namespaced_deployment("web", "default").spec.replicas

    # 12 requests waiting on one pod, target 5 per pod: ceil(1 * 12 / 5) = 3 replicas; the
    # queue then spreads over them (4 each, within reach of the target), and it stays at 3.
    set_queue(emu, {"app": "web"}, total=12)
    settle(ctl, lambda: replicas() == 3)
    settle(ctl, lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas == 3)
    for _ in range(3):
        ctl.step()
    assert replicas() == 3
    status = scaling.read_namespaced_horizontal_pod_autoscaler("web", "default").status
    assert (status.current_replicas, status.desired_replicas) == (3, 3)
    assert status.current_metrics[0].pods.current.average_value == "4"
    # The Custom Metrics API serves what the adapter would: the gauge per pod.
    values = api.call_api(*api.param_serialize(
        "GET", f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/{WAITING}",
        query_params=[("labelSelector", "app=web")], auth_settings=["BearerToken"]))
    values.read()
    items = json.loads(values.data)["items"]
    assert len(items) == 3 and {i["value"] for i in items} == {"4"}

    # A burst beyond what max allows stops at max; an empty queue goes back to min.
    set_queue(emu, {"app": "web"}, value=40)
    settle(ctl, lambda: replicas() == 4)
    set_queue(emu, {"app": "web"}, value=0)
    settle(ctl, lambda: replicas() == 1)
    events = [e.reason for e in core.list_namespaced_event("default").items]
    assert events.count("SuccessfulRescale") >= 3


def test_hpa_tolerance_and_the_scale_down_window(emu, api):
    ctl = KubeController(emu)
    apps, scaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    apps.create_namespaced_deployment("default", {**deployment("web"), "spec": {
        **deployment("web")["spec"], "replicas": 2}})
    scaling.create_namespaced_horizontal_pod_autoscaler("default", hpa(
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, 1, 4, "5", down_window=300))
    settle(ctl, lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas == 2)
    set_queue(emu, {"app": "web"}, value=5.4)  # 8 % above the target: within the tolerance
    for _ in range(3):
        ctl.step()
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 2
    set_queue(emu, {"app": "web"}, value=0)  # drained, but the window remembers the load
    for _ in range(3):
        ctl.step()
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 2


def test_hpa_scales_a_leaderworkerset_by_whole_groups_on_leader_metrics(emu, custom, core):
    ctl = KubeController(emu)
    template = {"spec": {"containers": [{"name": "vllm", "image": "vllm:1"}]}}
    custom.create_namespaced_custom_object(*LWS, "default", "leaderworkersets", {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": "r1"},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": template}}})
    client.AutoscalingV2Api(custom.api_client).create_namespaced_horizontal_pod_autoscaler("default", hpa(
        {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": "r1"}, 1, 3, "5"))
    settle(ctl, lambda: (custom.get_namespaced_custom_object(*LWS, "default", "leaderworkersets", "r1")
                         .get("status") or {}).get("readyReplicas"))
    # Only leaders expose the queue (the workers run Ray); the scale selector picks them. 9
    # waiting on one group: ceil(1 * 9 / 5) = 2 groups, then 4.5 each (within the tolerance).
    set_queue(emu, {"leaderworkerset.sigs.k8s.io/worker-index": "0"}, total=9)
    settle(ctl, lambda: len([p for p in core.list_namespaced_pod("default").items if _ready(p)]) == 4)
    for _ in range(3):
        ctl.step()
    lws = custom.get_namespaced_custom_object(*LWS, "default", "leaderworkersets", "r1")
    assert lws["spec"]["replicas"] == 2
    assert lws["status"]["hpaPodSelector"] == ("leaderworkerset.sigs.k8s.io/name=r1,"
                                               "leaderworkerset.sigs.k8s.io/worker-index=0")


def test_an_add_on_can_be_missing(emu, custom):
    emu.uninstall("podmonitors", "custom.metrics.k8s.io/v1beta1")
    code, _ = fails(custom.list_namespaced_custom_object, "monitoring.coreos.com", "v1", "default", "podmonitors")
    assert code == 404
    # KEDA stays installed unless taken away too.
    assert custom.list_namespaced_custom_object("keda.sh", "v1alpha1", "default", "scaledobjects")["items"] == []
    response = custom.api_client.call_api(*custom.api_client.param_serialize(
        "GET", "/apis/custom.metrics.k8s.io/v1beta1", auth_settings=["BearerToken"]))
    response.read()
    assert response.status == 404


def test_keda_makes_its_hpa_and_scales_on_the_prometheus_query(emu, api, custom):
    ctl = KubeController(emu)
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", deployment("web"))
    custom.create_namespaced_custom_object("monitoring.coreos.com", "v1", "default", "podmonitors", {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "podMetricsEndpoints": [{"port": "http", "relabelings": [
            {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_app"], "targetLabel": "app"}]}]}})
    custom.create_namespaced_custom_object("keda.sh", "v1alpha1", "default", "scaledobjects", {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"name": "web"}, "minReplicaCount": 1, "maxReplicaCount": 4,
                 "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                     "scaleDown": {"stabilizationWindowSeconds": 0}}}},
                 "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                     "serverAddress": "http://prometheus:9090", "threshold": "5",
                     "query": f'sum({WAITING}{{app="web"}})'}}]}})
    settle(ctl, lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas)
    made = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("keda-hpa-web", "default")
    assert made.spec.metrics[0].external.metric.name == "s0-prometheus"
    assert made.metadata.owner_references[0].kind == "ScaledObject"
    # 12 waiting in all, 5 per replica: ceil(12 / 5) = 3 replicas, and the total stays 12.
    set_queue(emu, {"app": "web"}, total=12)
    assert emu.prometheus_query(f'sum({WAITING}{{app="web"}})') == 12
    settle(ctl, lambda: apps.read_namespaced_deployment("web", "default").spec.replicas == 3)
    for _ in range(3):
        ctl.step()
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 3
    custom.delete_namespaced_custom_object("keda.sh", "v1alpha1", "default", "scaledobjects", "web")
    settle(ctl, lambda: emu.get("horizontalpodautoscalers", "default", "keda-hpa-web") is None)
