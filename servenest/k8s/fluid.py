"""Fluid objects that warm model weights from OSS into memory next to the GPUs (seed 003).

A Dataset names the OSS prefix (credentials by reference to a Secret, never inline), a
JindoRuntime of the same name caches it in memory (workers of 128 GiB, as in the seed, and
as many as the weights need), and a DataLoad warms it. The DataLoad's name carries the
weights' revision, so a redeploy of the same revision finds the completed load and does
not warm twice. Pure functions; the ack topology applies them.
"""

from __future__ import annotations

import hashlib
import math
import re

from servenest.spec import DeploymentSpec

GROUP, VERSION = "data.fluid.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
WORKER_MEMORY_GIB = 128  # seed 003's JindoRuntime worker
CACHE_HEADROOM = 1.1  # metadata and block overhead over the raw weight bytes
_OSS_URI = re.compile(r"^oss://([a-z0-9][a-z0-9-]{1,61}[a-z0-9])(/.*)?$")


def oss_endpoint(region: str) -> str:
    # The internal endpoint: pods in the region read OSS without internet traffic charges.
    return f"oss-{region}-internal.aliyuncs.com"


def dataset_name(spec: DeploymentSpec) -> str:
    return f"{spec.name}-weights"


def oss_secret_name(spec: DeploymentSpec) -> str:
    # One per deployment (the seed shares ``oss-secret``): teardown removes only its own.
    return f"{spec.name}-oss"


def cache_quota_gib(spec: DeploymentSpec) -> int:
    return max(1, math.ceil(spec.model_info.weight_gb * 1e9 / 2**30 * CACHE_HEADROOM))


def runtime_replicas(spec: DeploymentSpec) -> int:
    return max(1, math.ceil(cache_quota_gib(spec) / WORKER_MEMORY_GIB))


def revision_tag(spec: DeploymentSpec, oss_uri: str) -> str:
    """Short, stable id of what is being warmed (model, revision, location)."""
    ident = f"{spec.weights_repo}@{spec.weights.revision or 'default'}@{oss_uri}"
    return hashlib.sha256(ident.encode()).hexdigest()[:10]


def owned_labels(spec: DeploymentSpec, **extra: str) -> dict[str, str]:
    """Labels on everything ServeNest creates in a cluster: teardown and sweeps find it by them."""
    return {"app.kubernetes.io/managed-by": "servenest", "servenest/deployment": spec.name, **extra}


def _meta(name: str, namespace: str, spec: DeploymentSpec, **labels: str) -> dict:
    return {"name": name, "namespace": namespace, "labels": owned_labels(spec, **labels)}


def dataset(spec: DeploymentSpec, namespace: str, oss_uri: str) -> dict:
    if not _OSS_URI.match(oss_uri):
        raise ValueError(f"{oss_uri!r} is not oss://<bucket>/<prefix> with a bucket name OSS accepts")
    name = dataset_name(spec)
    return {
        "apiVersion": API_VERSION, "kind": "Dataset", "metadata": _meta(name, namespace, spec),
        "spec": {
            "placement": "Shared",
            "mounts": [{
                "name": "models", "mountPoint": oss_uri.rstrip("/"), "path": "/",
                "options": {"fs.oss.endpoint": oss_endpoint(spec.cloud.region)},
                "encryptOptions": [
                    {"name": "fs.oss.accessKeyId",
                     "valueFrom": {"secretKeyRef": {"name": oss_secret_name(spec), "key": "akId"}}},
                    {"name": "fs.oss.accessKeySecret",
                     "valueFrom": {"secretKeyRef": {"name": oss_secret_name(spec), "key": "akSecret"}}},
                ],
            }],
        },
    }


def jindo_runtime(spec: DeploymentSpec, namespace: str) -> dict:
    serverless = {"alibabacloud.com/compute-class": "performance", "alibabacloud.com/compute-qos": "default"}
    memory = f"{WORKER_MEMORY_GIB}Gi"
    return {
        "apiVersion": API_VERSION, "kind": "JindoRuntime",
        "metadata": _meta(dataset_name(spec), namespace, spec),  # same name as the Dataset
        "spec": {
            "networkmode": "ContainerNetwork",
            "replicas": runtime_replicas(spec),
            "master": {"podMetadata": {"labels": dict(serverless)}},
            "worker": {
                "podMetadata": {"labels": dict(serverless),
                                "annotations": {"kubernetes.io/resource-type": "serverless"}},
                "resources": {"requests": {"cpu": 16, "memory": memory},
                              "limits": {"cpu": 16, "memory": memory}},
            },
            "tieredstore": {"levels": [{
                "mediumtype": "MEM", "path": "/dev/shm", "volumeType": "emptyDir",
                "quota": memory, "high": "0.99", "low": "0.95",
            }]},
        },
    }


def dataload(spec: DeploymentSpec, namespace: str, oss_uri: str) -> dict:
    tag = revision_tag(spec, oss_uri)
    return {
        "apiVersion": API_VERSION, "kind": "DataLoad",
        "metadata": _meta(f"{dataset_name(spec)}-{tag}", namespace, spec, **{"servenest/revision": tag}),
        "spec": {"dataset": {"name": dataset_name(spec), "namespace": namespace},
                 "loadMetadata": True, "target": [{"path": "/", "replicas": 1}]},
    }


def fluid_objects(spec: DeploymentSpec, namespace: str, oss_uri: str) -> list[dict]:
    return [dataset(spec, namespace, oss_uri), jindo_runtime(spec, namespace), dataload(spec, namespace, oss_uri)]
