"""The ACK Kubernetes work pool: its base job template is accepted by a real Prefect server,
and prefect-kubernetes' own worker code turns it into a Job for the `servenest` namespace
whose pods read the Prefect API URL and auth string from a Secret (never the values)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import kubernetes_validate

from tests.integration.conftest import REPO
from tests.integration.servers import PREFECT

TEMPLATE = REPO / "deployments" / "work-pools" / "ack-kubernetes.json"
IMAGE = "registry.example/servenest/servenest:test"


def test_the_ack_template_creates_a_kubernetes_pool_on_the_server(prefect_server):
    from prefect.client.orchestration import get_client

    out = subprocess.run([PREFECT, "work-pool", "create", "servenest-ack", "--type", "kubernetes",
                          "--base-job-template", str(TEMPLATE.relative_to(REPO)), "--overwrite"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("servenest-ack")
    assert pool.type == "kubernetes"
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["namespace"]["default"] == "servenest"
    assert variables["service_account_name"]["default"] == "servenest-flow-runner"
    assert pool.base_job_template == json.loads(TEMPLATE.read_text())


def test_the_worker_renders_a_job_without_the_api_secrets(prefect_server, monkeypatch):
    """The real KubernetesWorker path: template + a deployment's job variables -> Job manifest.

    The worker itself holds PREFECT_API_URL and PREFECT_API_AUTH_STRING (the session's); by
    default a Kubernetes worker copies them into every Job as plain values. The template
    keeps them out, and the pods get them from the Secret instead.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL
    from prefect_kubernetes import worker as k8s_worker

    template = json.loads(TEMPLATE.read_text())
    created: dict = {}

    class FakeBatchV1Api:
        def __init__(self, client):
            pass

        async def create_namespaced_job(self, namespace, body):
            created.update(namespace=namespace, body=body)
            return body

    monkeypatch.setattr(k8s_worker, "BatchV1Api", FakeBatchV1Api)

    async def render(job_variables: dict) -> dict:
        created.clear()
        config = await k8s_worker.KubernetesWorkerJobConfiguration.from_template_and_values(
            template, job_variables)
        flow_run = FlowRun(flow_id=uuid.uuid4(), name="provision-qwen3-ack")
        config.prepare_for_flow_run(flow_run, worker_name="ack-worker")
        # Not entered as a context: that would start its cluster observer.
        worker = k8s_worker.KubernetesWorker(work_pool_name="servenest-ack")
        await worker._create_job(config, client=None)
        return created

    auth = PREFECT_API_AUTH_STRING.value()
    assert auth and PREFECT_API_URL.value()  # what a worker would leak
    # A deployment that sets env of its own, as ack deployments may.
    job = asyncio.run(render({"image": IMAGE, "env": {"SERVENEST_LOG_LEVEL": "debug"}}))
    manifest = job["body"]
    assert job["namespace"] == "servenest" and manifest["metadata"]["namespace"] == "servenest"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "servenest-flow-runner"
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    env = {e["name"]: e for e in container["env"]}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {
            "name": "servenest-prefect-api", "key": name}}}
    assert env["SERVENEST_LOG_LEVEL"]["value"] == "debug"
    assert "PREFECT__FLOW_RUN_ID" in env
    text = json.dumps(manifest)
    assert auth not in text and PREFECT_API_URL.value() not in text
    # Not strict: prefect-kubernetes' own default puts completions/parallelism in the pod
    # spec, which the API server accepts with a warning (unknown fields); kept as shipped.
    kubernetes_validate.validate(manifest, "1.31", strict=False)
