"""ack end to end: the real Prefect flows, the real CS SDK against the cloud emulator, the real
``kubernetes`` client against the Kubernetes API emulator with its controllers, the sync Job's
script really run, and the no-op engine serving behind the emulated load balancer."""

from __future__ import annotations

import httpx
import pytest

from servenest.errors import GateFailedError
from servenest.rehearsal.ack import emulated_ack, objects_left
from servenest.spec import DeploymentSpec
from tests.integration.conftest import TEST_KEY


def ack_spec(name: str, api_key_secret: str, cluster_id: str, **extra) -> DeploymentSpec:
    data = {
        "name": name, "model": "Qwen/Qwen3-0.6B", "topology": "ack",
        "weights": {"source": "modelscope", "oss_uri": f"oss://servenest-it/llm-model/{name}"},
        "access": {"api_key_secret": api_key_secret, "public": True, "allowed_cidrs": ["0.0.0.0/0"]},
        "cloud": {"cluster_id": cluster_id, "gpu_kind": "H20", "gpus_per_node": 1},
        "health": {"deadline_s": 60},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return DeploymentSpec.model_validate(data)


def artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key}


def test_ack_provision_serve_teardown_and_a_second_sync_finds_oss_verified(api_key_secret, tmp_path):
    from flows.provision import provision
    from flows.teardown import teardown

    with emulated_ack(tmp_path / "ack") as (cloud, cluster_id, kube, controller):
        spec = ack_spec("it-ack", api_key_secret, cluster_id)
        result = provision(spec)
        assert result["gate_passed"]
        with httpx.Client(base_url=result["base_url"], trust_env=False, timeout=10) as c:
            assert c.get("/v1/models").status_code == 401
            ok = c.get("/v1/models", headers={"Authorization": f"Bearer {TEST_KEY}"})
            assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "Qwen/Qwen3-0.6B"
        # The sync Job really uploaded the model and its manifests to the emulated bucket.
        bucket = tmp_path / "ack" / "sync" / "oss" / "servenest-it" / "llm-model" / "it-ack"
        assert {p.name for p in bucket.iterdir()} >= {"config.json", "model.safetensors",
                                                      ".servenest-sizes", ".servenest-sha256"}
        assert {"price-it-ack", "weights-it-ack", "connection-it-ack"} <= artifact_keys()

        out = teardown(spec.name)
        assert out["torn_down"] and objects_left(kube) == []
        with pytest.raises(httpx.ConnectError):  # the engine went with its pod
            httpx.get(result["base_url"] + "/health", timeout=2, trust_env=False)

        # Weights stay on OSS: the next bring-up's sync verifies them and uploads nothing.
        uploaded = {p: p.stat().st_mtime_ns for p in bucket.iterdir()}
        again = provision(spec)
        assert again["gate_passed"]
        assert {p: p.stat().st_mtime_ns for p in bucket.iterdir()} == uploaded
        teardown(spec.name)
        assert objects_left(kube) == []
        assert cloud.calls_for("DescribeClusterUserKubeconfig")  # the kubeconfig came from CS

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for artifact in client.read_artifacts():
            assert TEST_KEY not in str(artifact.data)


def test_a_crash_loop_fails_the_gate_with_diagnostics_and_cleans_up(api_key_secret, tmp_path):
    from flows.provision import provision

    with emulated_ack(tmp_path / "ack") as (_, cluster_id, kube, controller):
        controller.crash_loop = {"it-ack-crash-"}
        controller.crash_log = "torch.OutOfMemoryError: CUDA out of memory"
        spec = ack_spec("it-ack-crash", api_key_secret, cluster_id)
        with pytest.raises(GateFailedError, match=r"(?s)exited \(code 1\).*CUDA out of memory"):
            provision(spec)
        assert "diagnostics-it-ack-crash" in artifact_keys()
        assert objects_left(kube) == []  # the failed bring-up removed what it made


def test_deepseek_on_a_leader_worker_set_serves_through_the_leader(api_key_secret, tmp_path):
    from flows.provision import provision
    from flows.teardown import teardown

    with emulated_ack(tmp_path / "ack") as (_, cluster_id, kube, _):
        spec = ack_spec("it-ack-r1", api_key_secret, cluster_id, model="deepseek-ai/DeepSeek-R1",
                        engine={"served_model_name": "ds"},
                        cloud={"gpus_per_node": 8, "nodes": 2})
        result = provision(spec)
        assert result["gate_passed"] and result["model"] == "ds"
        [lws] = kube.list("leaderworkersets", "llm-model")
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
        assert len(kube.list("pods", "llm-model", {"servenest/component": "engine"})) == 2
        teardown(spec.name)
        assert objects_left(kube) == []


def test_servenest_up_emulate_rehearses_ack(api_key_secret, tmp_path, capsys, monkeypatch):
    import json

    import yaml

    from servenest.cli import main

    monkeypatch.setenv("SERVENEST_HOME", str(tmp_path / "home"))
    spec = ack_spec("it-ack-up", api_key_secret, "c0123456789abcdef0")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True)))
    assert main(["up", str(path), "--emulate"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "rehearsal"'):])
    assert summary["objects_left"] == [] and summary["kubernetes_api_calls"] > 20


def test_an_autoscaled_ack_deployment_grows_with_its_queue_and_leaves_nothing(api_key_secret, tmp_path):
    import time

    from flows.provision import provision
    from flows.teardown import teardown

    with emulated_ack(tmp_path / "ack") as (_, cluster_id, kube, _):
        spec = ack_spec("it-ack-hpa", api_key_secret, cluster_id, replicas={"min": 1, "max": 3},
                        autoscaling={"scale_down_window_s": 0})
        assert provision(spec)["gate_passed"]
        assert kube.get("horizontalpodautoscalers", "llm-model", "it-ack-hpa") is not None
        # The queue crosses the target (5 per pod), set the way a tool outside would.
        httpx.post(f"{kube.url}/__emulator/pod-metrics", trust_env=False, json={
            "namespace": "llm-model", "metric": "vllm:num_requests_waiting",
            "selector": {"servenest/deployment": "it-ack-hpa"}, "value": 12}).raise_for_status()
        deadline = time.monotonic() + 30
        while kube.get("deployments", "llm-model", "it-ack-hpa")["spec"]["replicas"] != 3:
            assert time.monotonic() < deadline, "the HPA did not scale the Deployment up"
            time.sleep(0.1)
        teardown(spec.name)
        assert objects_left(kube) == []
