"""The ack manifests: valid against the Kubernetes and CRD schemas, the seed's shapes, no secret."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from servenest.health import default_deadline_s
from servenest.k8s import serving
from servenest.k8s.manifests import to_yaml
from servenest.topology import open_topology
from tests.unit.test_cloud_scripts import _shellcheck
from tests.unit.test_k8s_fluid import crd_schema

K8S_VERSION = "1.31.0"  # ACK's current line (the emulated cluster says v1.31.1-aliyun.1)
CRD_KINDS = {"Dataset", "JindoRuntime", "DataLoad", "LeaderWorkerSet"}
KEY = "sk-manifest-test-4d1e"


@pytest.fixture
def specs(make_spec):
    """The shapes ack deploys: one pod, a public LWS group (seed 003's DeepSeek), SGLang."""
    return {
        "qwq-single": make_spec("ack"),
        "r1-lws-public": make_spec(
            "ack", name="deepseek-r1", model="deepseek-ai/DeepSeek-R1", engine={"served_model_name": "ds"},
            weights={"source": "oss", "oss_uri": "oss://servenest-models/llm-model/deepseek-r1"},
            access={"public": True, "allowed_cidrs": ["0.0.0.0/0"]},
            cloud={"gpu_kind": "H20", "gpus_per_node": 8, "nodes": 2}),
        "sglang-lws": make_spec(
            "ack", name="r1-sglang", model="deepseek-ai/DeepSeek-R1", engine={"kind": "sglang"},
            cloud={"gpu_kind": "PPU", "gpus_per_node": 8, "nodes": 2}),
    }


def plan_objects(spec) -> list[dict]:
    return open_topology(spec).plan()["kubernetes"]


def validate(obj: dict) -> None:
    if obj["kind"] in CRD_KINDS:
        jsonschema.validate(obj, crd_schema(obj["kind"]))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_planned_object_validates_against_its_schema(specs):
    for label, spec in specs.items():
        objects = plan_objects(spec)
        for obj in objects:
            validate(obj)
        kinds = [o["kind"] for o in objects]
        assert kinds.index("Namespace") == 0 and kinds.index("Dataset") < kinds.index("DataLoad"), label
        # The YAML a person reads is the same objects.
        assert list(yaml.safe_load_all(to_yaml(objects))) == objects


def test_a_schema_violation_is_caught(specs):
    [svc] = [o for o in plan_objects(specs["qwq-single"]) if o["kind"] == "Service"]
    svc["spec"]["ports"][0]["port"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(svc)
    lws = serving.workload(specs["r1-lws-public"])
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        validate(lws)


def test_one_pod_is_a_deployment_with_all_its_gpus_as_tp(specs):
    dep = serving.workload(specs["qwq-single"])
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # never two GPU pods at once
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [c] = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["labels"]["alibabacloud.com/gpu-model-series"] == "H20"
    assert pod["metadata"]["labels"]["alibabacloud.com/compute-class"] == "gpu"
    script = c["command"][2]
    assert "--tensor-parallel-size" not in script and "--served-model-name Qwen/QwQ-32B" in script
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "unit-test-weights", "readOnly": True}} \
        in pod["spec"]["volumes"]


def test_deepseek_671b_is_a_leader_worker_set_with_tp8_pp2(specs):
    lws = serving.workload(specs["r1-lws-public"])
    assert lws["kind"] == "LeaderWorkerSet"
    tpl = lws["spec"]["leaderWorkerTemplate"]
    assert tpl["size"] == 2 and lws["spec"]["startupPolicy"] == "LeaderCreated"
    leader = tpl["leaderTemplate"]["spec"]["containers"][0]
    worker = tpl["workerTemplate"]["spec"]["containers"][0]
    words = shlex.split(leader["command"][2].splitlines()[-1])
    assert words[words.index("--tensor-parallel-size") + 1] == "8"
    assert words[words.index("--pipeline-parallel-size") + 1] == "2"
    assert words[words.index("--distributed-executor-backend") + 1] == "ray"
    assert "ray start --head" in leader["command"][2]
    # A worker retries the head itself: a restart would recreate the whole group.
    assert 'until ray start --address="${LWS_LEADER_ADDRESS}:6379" --block; do' in worker["command"][2]
    # Only the leader serves HTTP: probes, port, key and the Service selector's role label.
    assert "startupProbe" in leader and "startupProbe" not in worker
    assert not any(e["name"] == "VLLM_API_KEY" for e in worker["env"])
    assert tpl["leaderTemplate"]["metadata"]["labels"][serving.ROLE_LABEL] == serving.SERVING_ROLE
    assert serving.ROLE_LABEL not in tpl["workerTemplate"]["metadata"]["labels"]


def test_sglang_groups_pass_rank_and_leader_address(specs):
    lws = serving.workload(specs["sglang-lws"])
    tpl = lws["spec"]["leaderWorkerTemplate"]
    leader = tpl["leaderTemplate"]["spec"]["containers"][0]["command"][2]
    worker = tpl["workerTemplate"]["spec"]["containers"][0]["command"][2]
    for script in (leader, worker):
        assert '--node-rank "${LWS_WORKER_INDEX}"' in script
        assert '--dist-init-addr "${LWS_LEADER_ADDRESS}:20000"' in script
        assert "--tp 16" in script  # SGLang has no PP: all 16 GPUs of the group
    assert '--api-key "$SGLANG_API_KEY"' in leader and "--api-key" not in worker


def test_startup_probe_allows_the_whole_load_time(specs):
    for spec in specs.values():
        pod = serving.workload(spec)
        tpl = pod["spec"].get("template") or pod["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        probe = tpl["spec"]["containers"][0]["startupProbe"]
        assert probe["httpGet"] == {"path": "/health", "port": spec.access.port}
        assert probe["periodSeconds"] * probe["failureThreshold"] >= default_deadline_s(spec.model_info.weight_gb)


def test_private_and_public_services_carry_the_seed_annotations(specs):
    private_only = serving.services(specs["qwq-single"])
    assert [s["metadata"]["name"] for s in private_only] == ["unit-test-private"]
    assert private_only[0]["metadata"]["annotations"] == {serving.LB_ADDRESS_TYPE: "intranet"}
    private, public = serving.services(specs["r1-lws-public"])
    assert public["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type": "internet",
        "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-ip-version": "ipv4",
    }
    spec = public["spec"]
    assert spec["type"] == "LoadBalancer" and spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"] == [{"name": "serving", "port": 8000, "protocol": "TCP", "targetPort": 8000}]
    assert "loadBalancerSourceRanges" not in spec  # a CLB ignores them: no false promise
    assert spec["selector"] == private["spec"]["selector"] == serving.serving_selector(specs["r1-lws-public"])


def test_gpu_models_found_on_ack_nodes_pin_the_pods(specs):
    pod = serving.workload(specs["qwq-single"], gpu_models=["NVIDIA-H20"])["spec"]["template"]["spec"]
    [term] = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "aliyun.accelerator/nvidia_name", "operator": "In", "values": ["NVIDIA-H20"]}]
    assert "affinity" not in serving.workload(specs["qwq-single"])["spec"]["template"]["spec"]


def test_a_new_launch_id_rolls_the_pods(specs):
    a = serving.workload(specs["qwq-single"], launch_id="a")["spec"]["template"]
    b = serving.workload(specs["qwq-single"], launch_id="b")["spec"]["template"]
    assert a != b and a["spec"] == b["spec"]


def test_keys_live_only_in_secrets(specs, make_spec):
    spec = specs["r1-lws-public"]
    secret = serving.api_key_secret(spec, KEY)
    assert base64.b64decode(secret["data"]["api-key"]).decode() == KEY
    oss = serving.oss_secret(spec, "LTAI-test-id", "oss-secret-value")
    manifests = json.dumps([serving.workload(spec), *serving.services(spec), serving.sync_job(make_spec("ack"))])
    for value in (KEY, "LTAI-test-id", "oss-secret-value"):
        assert value not in manifests
    assert "secretKeyRef" in manifests
    planned = json.dumps(plan_objects(spec))
    assert "<set at provision from a Prefect block>" in planned
    assert serving.redacted(oss)["data"] == {"akId": "<set at provision from a Prefect block>",
                                             "akSecret": "<set at provision from a Prefect block>"}
    with pytest.raises(ValueError):
        serving.api_key_secret(spec, "two\nlines")


def test_sync_job_targets_the_revision_and_the_oss_prefix(make_spec):
    spec = make_spec("ack", weights={"revision": "v1.0"})
    job = serving.sync_job(spec)
    assert job["metadata"]["name"] == serving.sync_job_name(spec) != serving.sync_job_name(make_spec("ack"))
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "DEST=oss://servenest-models/llm-model/qwq-32b" in script
    assert "--revision v1.0" in script
    # The sha256 manifest goes up last: a manifest on OSS means a finished sync.
    assert script.index('ossutil cp -r -f') < script.index('ossutil cp -f "$MANIFEST" "$DEST/$MANIFEST"')


def test_rendered_scripts_pass_shellcheck(specs, make_spec, tmp_path):
    scripts = {"sync": serving.sync_script(make_spec("ack"))}
    for label, spec in specs.items():
        for role in ("single",) if spec.cloud.nodes == 1 else ("leader", "worker"):
            scripts[f"{label}-{role}"] = serving.engine_script(spec, role)
    for label, text in scripts.items():
        path = tmp_path / f"{label}.sh"
        path.write_text(text)
        lint = subprocess.run([_shellcheck(), "--shell=bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{label}:\n{lint.stdout}{lint.stderr}"


def test_plan_json_carries_the_manifests(specs):
    from servenest.plan import render_plan

    plan = render_plan(specs["r1-lws-public"])
    kinds = [o["kind"] for o in plan["kubernetes"]]
    assert kinds == ["Namespace", "Secret", "Dataset", "JindoRuntime", "DataLoad", "Secret",
                     "LeaderWorkerSet", "Service", "Service"]
    assert plan["cluster"]["workload"] == "LeaderWorkerSet"
    json.dumps(plan)
