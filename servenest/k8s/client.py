"""The real ``kubernetes`` client, driven generically: apply, get, list, delete, watch, logs.

Objects stay plain dicts (the manifests ServeNest renders), so one path serves core kinds
and the Fluid and LeaderWorkerSet custom resources alike. Apply is server-side apply
(``application/apply-patch+yaml``, field manager ``servenest``, forced): a rerun converges
on the rendered objects, fields ServeNest stopped rendering are dropped, and nothing needs
a read-modify-write. A 409 (a conflict with another writer) is read again and retried.

Errors come back as ServeNest errors that say what to do: 401 means the temporary
kubeconfig expired or was revoked, 403 is RBAC, 5xx/429 and broken connections are
transient (retried here with backoff, then by the Prefect task).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from servenest.errors import (
    CloudCredentialsError,
    CloudError,
    CloudPermissionError,
    CloudTransientError,
)

log = logging.getLogger(__name__)
FIELD_MANAGER = "servenest"
DEPLOYMENT_LABEL = "servenest/deployment"

# kind -> (API path prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Dataset": ("/apis/data.fluid.io/v1alpha1", "datasets", True),
    "JindoRuntime": ("/apis/data.fluid.io/v1alpha1", "jindoruntimes", True),
    "DataLoad": ("/apis/data.fluid.io/v1alpha1", "dataloads", True),
    "LeaderWorkerSet": ("/apis/leaderworkerset.x-k8s.io/v1", "leaderworkersets", True),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers", True),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors", True),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects", True),
}
CUSTOM_METRICS_API = "/apis/custom.metrics.k8s.io/v1beta1"  # served by the metrics adapter
_ATTEMPTS = 6
_CONFLICT_ATTEMPTS = 5


class KubeNotFound(CloudError):
    pass


def _api_error(exc: Exception, what: str) -> CloudError:
    status = getattr(exc, "status", None)
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except ValueError:
        body = {}
    message = body.get("message") or getattr(exc, "reason", "") or str(exc)
    reason = body.get("reason", "")
    kw = {"code": reason, "status": status}
    if status == 401:
        return CloudCredentialsError(
            f"the cluster refused ServeNest's kubeconfig on {what} (401): it expired or was "
            f"revoked; rerun to fetch a fresh temporary kubeconfig through the CS API", **kw)
    if status == 403:
        return CloudPermissionError(
            f"{what} was forbidden by the cluster's RBAC: {message}. The RAM user needs the "
            f"cluster's admin (or a role covering these objects) in ACK's authorization page", **kw)
    if status == 404:
        return KubeNotFound(f"{what}: {message}", **kw)
    if status is None or status >= 500 or status == 429:
        return CloudTransientError(f"{what}: {status or 'connection error'} {message}", **kw)
    return CloudError(f"{what} failed ({status} {reason}): {message}", **kw)


def _retryable(exc: Exception) -> bool:
    status = getattr(exc, "status", None)
    return status is None or status >= 500 or status == 429


class Kube:
    """One cluster, through the real client's ``ApiClient``."""

    def __init__(self, api_client, sleep: Callable[[float], None] = time.sleep, backoff_scale: float = 1.0):
        self.api = api_client
        self.sleep = sleep
        self.backoff_scale = backoff_scale

    @classmethod
    def from_kubeconfig(cls, text: str, **kw: Any) -> Kube:
        import yaml
        from kubernetes import config

        client = config.new_client_from_config_dict(yaml.safe_load(text), persist_config=False)
        return cls(client, **kw)

    def close(self) -> None:
        self.api.close()

    # -- paths and raw requests -------------------------------------------------------------
    @staticmethod
    def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural, namespaced = RESOURCES[kind]
        out = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json", what: str = "", raw: bool = False) -> Any:
        """One call with retries of transient failures; the decoded JSON (or text if ``raw``)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        what = what or f"{method} {path}"
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                params = self.api.param_serialize(
                    method=method, resource_path=path, query_params=list((query or {}).items()),
                    header_params={"Content-Type": content_type, "Accept": "application/json, */*"},
                    body=body, auth_settings=["BearerToken"])
                response = self.api.call_api(*params)
                response.read()
                if response.status >= 400:
                    raise ApiException.from_response(
                        http_resp=response, body=response.data.decode("utf-8", "replace"), data=None)
            except (ApiException, HTTPError) as exc:
                if not _retryable(exc) or attempt == _ATTEMPTS:
                    raise _api_error(exc, what) from None
                self.sleep(random.uniform(0, min(8.0, 0.5 * 2 ** attempt)) * self.backoff_scale)
                continue
            text = response.data.decode("utf-8", "replace")
            return text if raw else (json.loads(text) if text else {})
        raise AssertionError("unreachable")

    # -- objects ------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.request("GET", self.path(kind, namespace, name), what=f"reading {kind} {name}")
        except KubeNotFound:
            return None

    def list(self, kind: str, namespace: str | None = None, labels: dict[str, str] | None = None) -> list[dict]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        return self.request("GET", self.path(kind, namespace), query=query,
                            what=f"listing {kind}s").get("items", [])

    def apply(self, obj: dict) -> dict:
        """Server-side apply: create or converge; the object as stored."""
        kind, meta = obj["kind"], obj["metadata"]
        path = self.path(kind, meta.get("namespace"), meta["name"])
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                return self.request(
                    "PATCH", path, body=obj, query={"fieldManager": FIELD_MANAGER, "force": "true"},
                    content_type="application/apply-patch+yaml", what=f"applying {kind} {meta['name']}")
            except CloudError as exc:
                if exc.status != 409 or attempt == _CONFLICT_ATTEMPTS:
                    raise
                log.info("conflict applying %s %s; retrying", kind, meta["name"])
                self.sleep(0.2 * attempt * self.backoff_scale)
        raise AssertionError("unreachable")

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Ask for deletion (children go with it, in the background); False if already gone."""
        try:
            self.request("DELETE", self.path(kind, namespace, name),
                         body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
                         what=f"deleting {kind} {name}")
        except KubeNotFound:
            return False
        return True

    def wait_gone(self, kind: str, namespace: str | None, name: str, timeout_s: float,
                  poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        deadline = clock() + timeout_s
        while self.get(kind, namespace, name) is not None:
            if clock() >= deadline:
                raise CloudTransientError(f"{kind} {namespace}/{name} still exists after {timeout_s:.0f} s")
            self.sleep(poll_s)

    def pod_log(self, namespace: str, pod: str, tail: int = 40, previous: bool = False,
                container: str | None = None) -> str:
        query: dict[str, Any] = {"tailLines": tail}
        if previous:
            query["previous"] = "true"
        if container:
            query["container"] = container
        try:
            return self.request("GET", self.path("Pod", namespace, pod, "log"), query=query, raw=True,
                                what=f"reading the log of pod {pod}")
        except CloudError as exc:
            if exc.status in (400, 404):  # no previous container, or the pod just went
                return ""
            raise

    def version(self) -> dict:
        return self.request("GET", "/version", what="reading the cluster's version")

    # -- watch -------------------------------------------------------------------------------
    def watch_object(self, kind: str, namespace: str, name: str, timeout_s: float,
                     clock: Callable[[], float] = time.monotonic) -> Iterator[dict]:
        """The object now, then each change, until ``timeout_s`` passes or it is deleted.

        A watch that ends (server timeout) is resumed from the last resourceVersion; one
        answered 410 Gone (the version fell out of the server's history) restarts from a
        fresh read, as client-go's reflector does.
        """
        from kubernetes import watch
        from kubernetes.client import CustomObjectsApi
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        prefix, plural, _ = RESOURCES[kind]
        if not prefix.startswith("/apis/"):  # only custom resources (DataLoad) are watched
            raise ValueError(f"watch_object watches custom resources; {kind} is a core kind")
        group, version = prefix.removeprefix("/apis/").split("/")
        api = CustomObjectsApi(self.api)
        deadline = clock() + timeout_s
        current = self.get(kind, namespace, name)
        if current is None:
            raise KubeNotFound(f"{kind} {namespace}/{name} does not exist")
        yield current
        rv = current["metadata"].get("resourceVersion")
        while clock() < deadline:
            remaining = max(1, int(deadline - clock()))
            w = watch.Watch()
            try:
                for event in w.stream(api.list_namespaced_custom_object, group, version, namespace, plural,
                                      field_selector=f"metadata.name={name}", resource_version=rv,
                                      timeout_seconds=min(remaining, 300)):
                    obj = event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] == "DELETED":
                        return
                    yield obj
            except (ApiException, HTTPError) as exc:
                if isinstance(exc, ApiException) and exc.status != 410:
                    raise _api_error(exc, f"watching {kind} {name}") from None
                # 410 Gone: the version left the server's history; a broken stream: the
                # connection dropped. Either way, read the object again and watch from there.
                log.info("watch of %s %s ended (%s); reading it again", kind, name, type(exc).__name__)
                current = self.get(kind, namespace, name)
                if current is None:
                    return
                rv = current["metadata"].get("resourceVersion")
                yield current
            finally:
                w.stop()
