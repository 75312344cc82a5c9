"""A small Kubernetes API server, and a controller loop that plays the cluster, for tests.

No real API server runs on this machine, so tests point the REAL ``kubernetes`` client at
this one::

    with KubeEmulator() as emu, KubeController(emu).start():
        api = kubernetes.config.new_client_from_config_dict(yaml.safe_load(emu.kubeconfig()))
        kubernetes.client.AppsV1Api(api).create_namespaced_deployment("default", {...})

What the API server emulates: the REST paths of the resources in :data:`RESOURCES` (core
``/api/v1``, ``/apis/{group}/{version}``), bearer-token auth, create/get/list/replace/patch/
delete with Kubernetes' status codes and ``Status`` error bodies, one global
``resourceVersion`` counter with optimistic concurrency, ``generation``, label and field
selectors, the ``/status`` subresource, ``pods/log``, dry runs, watches with a bounded event
history (and 410 Expired when it is outrun), a little admission (defaults, name and label
validation, the checks callers most often get wrong) and fault injection
(:class:`KubeFaults`). Engine metrics are emulated too: :meth:`KubeEmulator.set_pod_metric`
(or ``POST /__emulator/pod-metrics``) gives matching pods a gauge, served per pod on the
Custom Metrics API (``/apis/custom.metrics.k8s.io/v1beta1``, as a metrics adapter would) and
read by the controller's HorizontalPodAutoscaler; :meth:`KubeEmulator.prometheus_query`
answers KEDA's ``sum(metric{label="value"})`` over what the PodMonitors scrape (their
relabelings applied). A CRD (or the metrics API) can be taken away with
:meth:`KubeEmulator.uninstall`, as on a cluster without that add-on.

What it does not: TLS, RBAC, managed fields and field ownership (server-side apply is a
JSON merge patch; strategic merge is too), finalizers, deletion propagation policies
(dependents always go by background garbage collection, even for batch/v1 Jobs, whose API
default is to orphan them), list pagination, delete collections, real scheduling,
networking or containers. :class:`KubeController` plays the
controllers and kubelets in discrete :meth:`KubeController.step` passes: Deployments and
LeaderWorkerSets own their pods directly (no ReplicaSets or StatefulSets), updates are
Recreate rather than rolling, Jobs run one pod at a time, HorizontalPodAutoscalers act on
``Pods`` and ``External`` metrics, and KEDA turns each ScaledObject into its ``keda-hpa-<name>``
with one External metric per Prometheus trigger.
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime as _dt
import functools
import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from servenest.rehearsal.http import EmulatorHandler, ServedEmulator

JSON = "application/json"
WATCH_TIMEOUT = 60.0  # seconds; a real server ends watches after minutes, clients re-watch
VERSION = {
    "major": "1", "minor": "31", "gitVersion": "v1.31.1-aliyun.1",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2024-09-20T00:00:00Z", "goVersion": "go1.22.6", "compiler": "gc",
    "platform": "linux/amd64",
}
MODIFIED_MESSAGE = ("the object has been modified; please apply your changes to the latest "
                    "version and try again")
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes draws generated names from
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Resource:
    plural: str
    api_version: str  # "v1" or "group/version"
    kind: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """How API messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, Resource] = {r.plural: r for r in (
    Resource("namespaces", "v1", "Namespace", False),
    Resource("nodes", "v1", "Node", False),
    Resource("persistentvolumes", "v1", "PersistentVolume", False),
    Resource("secrets", "v1", "Secret"),
    Resource("configmaps", "v1", "ConfigMap"),
    Resource("services", "v1", "Service"),
    Resource("pods", "v1", "Pod"),
    Resource("events", "v1", "Event"),
    Resource("persistentvolumeclaims", "v1", "PersistentVolumeClaim"),
    Resource("deployments", "apps/v1", "Deployment"),
    Resource("replicasets", "apps/v1", "ReplicaSet"),
    Resource("jobs", "batch/v1", "Job"),
    Resource("datasets", "data.fluid.io/v1alpha1", "Dataset"),
    Resource("jindoruntimes", "data.fluid.io/v1alpha1", "JindoRuntime"),
    Resource("dataloads", "data.fluid.io/v1alpha1", "DataLoad"),
    Resource("leaderworkersets", "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    Resource("horizontalpodautoscalers", "autoscaling/v2", "HorizontalPodAutoscaler"),
    Resource("podmonitors", "monitoring.coreos.com/v1", "PodMonitor"),
    Resource("scaledobjects", "keda.sh/v1alpha1", "ScaledObject"),
)}
CUSTOM_METRICS = "custom.metrics.k8s.io/v1beta1"
HPA_TOLERANCE = 0.1  # the HPA controller's default: no change within 10 % of the target
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES.values()}
# Kinds without a status subresource here: a write to the object itself may set status.
_STATUS_IN_MAIN = {"namespaces", "nodes", "secrets", "configmaps", "events"}
_INITIAL_STATUS = {"pods": {"phase": "Pending"}, "services": {"loadBalancer": {}},
                   "horizontalpodautoscalers": {"currentReplicas": 0, "desiredReplicas": 0},
                   "namespaces": {"phase": "Active"}}


class KubeError(Exception):
    """An API error, answered as a ``Status`` object with its HTTP code."""

    def __init__(self, code: int, reason: str, message: str, name: str = "",
                 res: Resource | None = None):
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.details = {"name": name, "group": res.group, "kind": res.plural} if res else {}

    def body(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details,
                "code": self.code}


def _gone() -> dict:
    return KubeError(410, "Expired", "too old resource version").body()


def _not_found(res: Resource, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{res.qualified} "{name}" not found', name, res)


def _conflict(res: Resource, name: str) -> KubeError:
    message = f'Operation cannot be fulfilled on {res.qualified} "{name}": {MODIFIED_MESSAGE}'
    return KubeError(409, "Conflict", message, name, res)


@dataclass
class KubeFaults:
    """Fault knobs; each counts down as it fires."""

    conflicts: dict[str, int] = field(default_factory=dict)  # plural -> next N writes: 409
    gone_watches: int = 0  # next N watches: one ERROR 410 Expired event
    server_errors: dict[str, int] = field(default_factory=dict)  # plural -> next N: 500
    unavailable: int = 0  # next N requests of any kind: 503


@dataclass
class MetricLoad:
    """An emulated engine gauge on the running pods of ``namespace`` matching ``selector``:
    ``value`` on each, or ``total`` spread evenly over them (a queue shared by the replicas)."""

    namespace: str
    metric: str
    selector: dict[str, str]
    value: float | None = None
    total: float | None = None


def parse_quantity(text: Any) -> float:
    """A Kubernetes quantity as a number ("800m" -> 0.8); the suffixes metrics use."""
    text = str(text)
    for suffix, scale in (("m", 1e-3), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def _milli(value: float) -> str:
    """A quantity as the API server writes it: whole numbers plain, else milli-units."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


@dataclass
class Call:
    """One request as the emulator saw it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    status: int = 0


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _meta(obj: dict) -> dict:
    return obj.setdefault("metadata", {})


def _labels(obj: dict) -> dict:
    return obj.get("metadata", {}).get("labels") or {}


def _spec_part(obj: dict) -> dict:
    """What ``generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _same(a: dict, b: dict) -> bool:
    """Equal apart from resourceVersion: such a write is a no-op, as in Kubernetes."""
    def strip(o: dict) -> dict:
        return {**o, "metadata": {k: v for k, v in o.get("metadata", {}).items()
                                  if k != "resourceVersion"}}
    return strip(a) == strip(b)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes, objects merge, anything else replaces)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test. Raises ValueError when one fails."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ValueError(f"invalid path {path!r}")
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path.split("/")[1:]]
        if not keys:  # the whole document
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op.get("value"))
            elif kind == "test" and doc != op.get("value"):
                raise ValueError("testing the document failed")
            continue
        parent = doc
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last = keys[-1]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                if idx > len(parent):
                    raise ValueError(f"index {idx} out of range at {path}")
                parent.insert(idx, copy.deepcopy(op.get("value")))
                continue
            current = parent[idx]
        else:
            if kind == "add":
                parent[last] = copy.deepcopy(op.get("value"))
                continue
            if last not in parent:
                raise ValueError(f"no value at {path}")
            current = parent[last]
        if kind == "remove":
            del parent[idx if isinstance(parent, list) else last]
        elif kind == "replace":
            parent[idx if isinstance(parent, list) else last] = copy.deepcopy(op.get("value"))
        elif kind == "test":
            if current != op.get("value"):
                raise ValueError(f"testing value at {path} failed")
        else:
            raise ValueError(f"unsupported operation {kind!r}")
    return doc


_SELECTOR_TERM = re.compile(
    r"^\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(==|=|!=)\s*([-A-Za-z0-9_.]*)|\s(in|notin)\s*\(([^)]*)\))?\s*$"
)


def label_selector(text: str) -> Callable[[dict], bool]:
    """Labels predicate for ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
    ``a notin (x,y)``, comma-separated (AND)."""
    tests: list[Callable[[dict], bool]] = []
    for term in re.split(r",(?![^()]*\))", text) if text.strip() else []:
        m = _SELECTOR_TERM.match(term)
        if not m or (m.group(1) and (m.group(3) or m.group(5))):
            raise KubeError(400, "BadRequest", f"unable to parse requirement: {term.strip()!r}")
        neg, key, op, value, set_op, values = m.groups()
        choices = {v.strip() for v in (values or "").split(",") if v.strip()}
        if neg:
            tests.append(lambda lb, k=key: k not in lb)
        elif op in ("=", "=="):
            tests.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif op == "!=":  # also matches objects without the label, as in Kubernetes
            tests.append(lambda lb, k=key, v=value: lb.get(k) != v)
        elif set_op == "in":
            tests.append(lambda lb, k=key, c=choices: lb.get(k) in c)
        elif set_op == "notin":
            tests.append(lambda lb, k=key, c=choices: lb.get(k) not in c)
        else:
            tests.append(lambda lb, k=key: k in lb)
    return lambda labels: all(t(labels) for t in tests)


def field_selector(text: str) -> Callable[[dict], bool]:
    """Object predicate for ``path=value``/``==``/``!=`` on dotted paths (metadata.name…)."""
    tests: list[Callable[[dict], bool]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise KubeError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = m.group(1).split("."), m.group(2), m.group(3)

        def get(obj: dict, path: list[str] = path) -> str:
            for key in path:
                obj = obj.get(key) if isinstance(obj, dict) else None
            return "" if obj is None else str(obj)

        tests.append(lambda o, g=get, v=value, eq=(op != "!="): (g(o) == v) == eq)
    return lambda obj: all(t(obj) for t in tests)


def _matcher(query: dict[str, str]) -> Callable[[dict], bool]:
    labels = label_selector(query.get("labelSelector", ""))
    fields = field_selector(query.get("fieldSelector", ""))
    return lambda obj: labels(_labels(obj)) and fields(obj)


def _lines(events: list[tuple[str, dict]]) -> Iterator[bytes]:
    for kind, obj in events:
        yield json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class KubeEmulator(ServedEmulator):
    """In-process Kubernetes API server (see the module docstring for its reach)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 token: str = "emulator-token", history: int = 1000):
        self.host, self.port, self.token = host, port, token
        self.tokens: set[str] = {token}
        self.faults = KubeFaults()
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self._changed = threading.Condition(self.lock)  # wakes watchers on every event
        self._objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name)
        self._events: collections.deque[tuple[int, str, str, dict]] = collections.deque(
            maxlen=max(1, history))  # (resourceVersion, plural, type, object)
        self._dropped = 0  # resourceVersion of the newest event pushed out of the history
        self._rv = 0
        self._logs: dict[tuple[str, str, bool], str] = {}  # (namespace, pod, previous)
        self._rng = random.Random(0)
        self._cluster_ips = itertools.count(1)
        self._node_ports = itertools.count(30000)
        self.metric_loads: dict[tuple[str, str, str], MetricLoad] = {}
        self.uninstalled: set[str] = set()  # plurals (or CUSTOM_METRICS) that answer 404
        self._stopped = False
        for ns in ("default", "kube-system", "kube-public"):
            self.add_namespace(ns)

    # ------------------------------------------------------------------ lifecycle

    def _before_stop(self) -> None:
        with self._changed:  # open watch streams see this and end
            self._stopped = True
            self._changed.notify_all()

    def start(self) -> KubeEmulator:
        self._stopped = False
        return super().start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, token: str | None = None) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator-user", "user": {"token": token or self.token}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "emulator-user", "namespace": "default"}}],
            "current-context": "emulator",
        }, sort_keys=False)

    def add_token(self, token: str) -> None:
        with self.lock:
            self.tokens.add(token)

    def expire_token(self, token: str) -> None:
        with self.lock:
            self.tokens.discard(token)

    # ------------------------------------------------------------------ direct state access

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        res = self._resource(plural)
        with self.lock:
            return copy.deepcopy(self._objects.get(self._key(res, namespace, name)))

    def list(self, plural: str, namespace: str | None = None,
             labels: dict[str, str] | None = None) -> list[dict]:
        self._resource(plural)
        with self.lock:
            return [copy.deepcopy(obj) for key, obj in sorted(self._objects.items())
                    if key[0] == plural and (namespace is None or key[1] == namespace)
                    and all(_labels(obj).get(k) == v for k, v in (labels or {}).items())]

    def put(self, obj: dict) -> dict:
        """Create or overwrite ``obj`` with no checks; a new resourceVersion and watch event."""
        res = _BY_KIND.get((obj.get("apiVersion"), obj.get("kind")))
        if res is None:
            raise ValueError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        if res.namespaced and not meta.get("namespace"):
            raise ValueError(f"{res.kind} {meta.get('name')!r} needs a namespace")
        with self.lock:
            old = self._objects.get(self._key(res, meta.get("namespace"), meta["name"]))
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
            return self._commit(res, obj, "MODIFIED" if old else "ADDED")

    def remove(self, plural: str, namespace: str | None, name: str) -> None:
        res = self._resource(plural)
        with self.lock:
            obj = self._objects.get(self._key(res, namespace, name))
            if obj is not None:
                self._commit(res, copy.deepcopy(obj), "DELETED")

    def add_node(self, name: str, labels: dict[str, str] | None = None,
                 allocatable: dict[str, str] | None = None) -> dict:
        alloc = {"cpu": "8", "memory": "32Gi", "pods": "110", **(allocatable or {})}
        address = f"192.168.0.{len(self.list('nodes')) + 10}"
        return self.put({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  "kubernetes.io/os": "linux", **(labels or {})}},
            "spec": {},
            "status": {
                "allocatable": alloc, "capacity": dict(alloc),
                "addresses": [{"type": "InternalIP", "address": address},
                              {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastTransitionTime": _now()}],
            },
        })

    def add_namespace(self, name: str) -> dict:
        with self.lock:
            return self.get("namespaces", None, name) or self.put({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    def uninstall(self, *names: str) -> None:
        """Answer 404 for these resources (plurals) or CUSTOM_METRICS, as if not installed."""
        with self.lock:
            self.uninstalled.update(names)

    def set_pod_metric(self, namespace: str, metric: str, *, selector: dict[str, str] | None = None,
                       value: float | None = None, total: float | None = None) -> MetricLoad:
        """Give the running pods matching ``selector`` the gauge ``metric`` (see MetricLoad);
        it follows pods as they come and go."""
        if (value is None) == (total is None):
            raise ValueError("give exactly one of value and total")
        load = MetricLoad(namespace, metric, dict(selector or {}), value, total)
        with self.lock:
            key = (namespace, metric, json.dumps(load.selector, sort_keys=True))
            self.metric_loads[key] = load
        return load

    def pod_metrics(self, namespace: str, metric: str,
                    match: Callable[[dict], bool] = lambda pod: True) -> dict[str, float]:
        """pod name -> the gauge's value, over running pods that ``match``."""
        with self.lock:
            running = [p for p in self.list("pods", namespace)
                       if _phase(p) == "Running" and not _deleting(p) and match(p)]
            out: dict[str, float] = {}
            for load in self.metric_loads.values():
                if load.namespace != namespace or load.metric != metric:
                    continue
                pods = [p for p in running
                        if all(_labels(p).get(k) == v for k, v in load.selector.items())]
                for pod in pods:
                    out[pod["metadata"]["name"]] = load.value if load.total is None \
                        else load.total / len(pods)
            return out

    def prometheus_query(self, query: str) -> float | None:
        """Prometheus for the one query shape KEDA's triggers send here, ``sum(metric{k="v",...})``,
        over the series the PodMonitors scrape; None when no series matches."""
        found = re.fullmatch(r'\s*sum\(\s*([A-Za-z_:][\w:]*)\s*(?:\{(.*)\})?\s*\)\s*', query)
        if not found:
            raise ValueError(f"the emulated Prometheus answers sum(metric{{...}}) only, not {query!r}")
        wanted = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', found.group(2) or ""))
        values = [v for labels, v in self._scraped(found.group(1))
                  if all(labels.get(k) == want for k, want in wanted.items())]
        return sum(values) if values else None

    def _scraped(self, metric: str) -> list[tuple[dict[str, str], float]]:
        """(series labels, value) as Prometheus would hold them after each PodMonitor's scrape."""
        out = []
        for monitor in self.list("podmonitors"):
            spec = monitor.get("spec") or {}
            wanted = (spec.get("selector") or {}).get("matchLabels") or {}
            spaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [monitor["metadata"]["namespace"]]
            for ns in spaces:
                pods = {p["metadata"]["name"]: p for p in self.list("pods", ns)}
                values = self.pod_metrics(ns, metric, lambda p, w=wanted: all(
                    _labels(p).get(k) == v for k, v in w.items()))
                for name, value in values.items():
                    meta = {"__meta_kubernetes_pod_name": name, "__meta_kubernetes_namespace": ns, **{
                        "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", k): v
                        for k, v in _labels(pods[name]).items()}}
                    labels = {"namespace": ns, "pod": name}
                    for endpoint in spec.get("podMetricsEndpoints") or []:
                        for rule in endpoint.get("relabelings") or []:
                            if rule.get("action", "replace").lower() == "replace" and rule.get("targetLabel"):
                                labels[rule["targetLabel"]] = ";".join(
                                    meta.get(src, "") for src in rule.get("sourceLabels") or [])
                    out.append((labels, value))
        return out

    def set_pod_log(self, namespace: str, pod: str, text: str, previous: bool = False) -> None:
        with self.lock:
            self._logs[(namespace, pod, previous)] = text

    # ------------------------------------------------------------------ storage

    @staticmethod
    def _resource(plural: str) -> Resource:
        if plural not in RESOURCES:
            raise ValueError(f"unknown resource {plural!r}")
        return RESOURCES[plural]

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        return res.plural, (namespace or "") if res.namespaced else "", name

    def _commit(self, res: Resource, obj: dict, event: str) -> dict:
        """Store (or drop) ``obj`` under a new resourceVersion and tell the watchers."""
        self._rv += 1
        meta = _meta(obj)
        meta["resourceVersion"] = str(self._rv)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        key = self._key(res, meta.get("namespace"), meta["name"])
        if event == "DELETED":
            self._objects.pop(key, None)
            if res.plural == "pods":  # a new pod of the same name starts with no logs
                for previous in (False, True):
                    self._logs.pop((key[1], key[2], previous), None)
        else:
            self._objects[key] = obj
        if len(self._events) == self._events.maxlen:
            self._dropped = self._events[0][0]
        self._events.append((self._rv, res.plural, event, copy.deepcopy(obj)))
        self._changed.notify_all()
        return copy.deepcopy(obj)

    def _stored(self, res: Resource, ns: str | None, name: str) -> dict:
        obj = self._objects.get(self._key(res, ns, name))
        if obj is None:
            raise _not_found(res, name)
        return obj

    # ------------------------------------------------------------------ HTTP dispatch

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes,
               headers: dict[str, str]) -> tuple[int, Any, str]:
        """Answer one request: (status, JSON-able payload | text | event stream, type)."""
        call = Call(method, path, dict(query), headers.get("content-type", ""))
        try:
            status, payload, ctype = self._dispatch(method, path, query, body, headers)
        except KubeError as err:
            status, payload, ctype = err.code, err.body(), JSON
        call.status = status
        with self.lock:
            self.calls.append(call)
        return status, payload, ctype

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes,
                  headers: dict[str, str]) -> tuple[int, Any, str]:
        if path == "/__emulator/pod-metrics":  # the control endpoint, like the cloud emulator's
            return self._metrics_control(method, body)
        with self.lock:
            if self.faults.unavailable > 0:
                self.faults.unavailable -= 1
                raise KubeError(503, "ServiceUnavailable",
                                "the server is currently unable to handle the request")
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:].strip() not in self.tokens:
                raise KubeError(401, "Unauthorized", "Unauthorized")
        if method == "GET" and path.rstrip("/") in ("/version", "/api", "/apis"):
            return 200, self._discovery(path.rstrip("/")), JSON
        parts = [p for p in path.split("/") if p]
        if parts[:3] == ["apis", *CUSTOM_METRICS.split("/")] and method == "GET":
            return 200, self._custom_metrics(parts[3:], query), JSON
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        res, ns, name, sub = self._route(gv, rest)
        if res.plural in self.uninstalled:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        with self.lock:
            self._inject_faults(res, method, name or "")
            if method == "GET" and name is None and _truthy(query.get("watch", "")):
                return 200, self._watch(res, ns, query), JSON
            return self._verb(method, res, ns, name, sub, query, body,
                              headers.get("content-type", JSON))

    def _metrics_control(self, method: str, body: bytes) -> tuple[int, Any, str]:
        if method == "POST":
            try:
                spec = json.loads(body or b"{}")
                self.set_pod_metric(spec["namespace"], spec["metric"], selector=spec.get("selector"),
                                    value=spec.get("value"), total=spec.get("total"))
            except (ValueError, TypeError, KeyError) as exc:
                return 400, {"error": f"{type(exc).__name__}: {exc}"}, JSON
        with self.lock:
            return 200, [vars(load) for load in self.metric_loads.values()], JSON

    def _custom_metrics(self, rest: list[str], query: dict[str, str]) -> dict:
        """The Custom Metrics API a metrics adapter serves: discovery, and pod metrics."""
        if CUSTOM_METRICS in self.uninstalled:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            with self.lock:
                names = sorted({load.metric for load in self.metric_loads.values()})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": CUSTOM_METRICS,
                    "resources": [{"name": f"pods/{n}", "singularName": "", "namespaced": True,
                                   "kind": "MetricValueList", "verbs": ["get"]} for n in names]}
        if len(rest) != 5 or rest[0] != "namespaces" or rest[2] != "pods":
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        ns, pod, metric = rest[1], rest[3], rest[4]
        match = _matcher(query)
        values = self.pod_metrics(ns, metric, lambda p: match(p) and pod in ("*", p["metadata"]["name"]))
        if not values:
            raise KubeError(404, "NotFound", f'the server could not find the metric {metric} for pods')
        return {"kind": "MetricValueList", "apiVersion": CUSTOM_METRICS, "metadata": {}, "items": [
            {"describedObject": {"kind": "Pod", "namespace": ns, "name": name, "apiVersion": "/v1"},
             "metricName": metric, "timestamp": _now(), "value": _milli(v)}
            for name, v in sorted(values.items())]}

    @staticmethod
    def _route(gv: str, rest: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
        missing = KubeError(404, "NotFound", "the server could not find the requested resource")
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in RESOURCES \
                and RESOURCES[rest[2]].namespaced:
            ns, rest = rest[1], rest[2:]
        res = RESOURCES.get(rest[0]) if rest else None
        if res is None or res.api_version != gv or len(rest) > 3:
            raise missing
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (res.namespaced and ns is None and name is not None) \
                or sub not in (None, "status", "log") or (sub == "log" and res.plural != "pods"):
            raise missing
        return res, ns, name, sub

    def _inject_faults(self, res: Resource, method: str, name: str) -> None:
        f = self.faults
        if f.server_errors.get(res.plural, 0) > 0:
            f.server_errors[res.plural] -= 1
            raise KubeError(500, "InternalError", "Internal error occurred: emulated fault")
        if method in ("POST", "PUT", "PATCH") and f.conflicts.get(res.plural, 0) > 0:
            f.conflicts[res.plural] -= 1
            raise _conflict(res, name)

    def _verb(self, method: str, res: Resource, ns: str | None, name: str | None,
              sub: str | None, query: dict[str, str], body: bytes,
              ctype: str) -> tuple[int, Any, str]:
        if name is None:
            if method == "GET":
                return 200, self._list(res, ns, query), JSON
            if method == "POST" and (ns is not None or not res.namespaced):
                return 201, self._create(res, ns, self._json(body, dict), query), JSON
        elif sub == "log":
            if method == "GET":
                return 200, self._log(ns or "", name, query), "text/plain"
        elif method == "GET":
            return 200, copy.deepcopy(self._stored(res, ns, name)), JSON
        elif method == "PUT":
            return 200, self._replace(res, ns, name, sub, self._json(body, dict), query), JSON
        elif method == "PATCH":
            return self._patch(res, ns, name, sub, query, body, ctype)
        elif method == "DELETE" and sub is None:
            return 200, self._delete(res, ns, name, dry=query.get("dryRun") == "All"), JSON
        raise KubeError(405, "MethodNotAllowed",
                        "the server does not allow this method on the requested resource")

    @staticmethod
    def _json(body: bytes, kind: type) -> Any:
        try:
            value = json.loads(body or b"null")
        except ValueError as exc:
            raise KubeError(400, "BadRequest", f"invalid JSON body: {exc}") from None
        if not isinstance(value, kind):
            raise KubeError(400, "BadRequest", f"the body must be a JSON {kind.__name__}")
        return value

    def _discovery(self, path: str) -> dict:
        if path == "/version":
            return dict(VERSION)
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]}
        groups = sorted({r.api_version for r in RESOURCES.values() if r.group})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": gv.split("/")[0],
            "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
            "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
        } for gv in groups]}

    # ------------------------------------------------------------------ verbs

    def _list(self, res: Resource, ns: str | None, query: dict[str, str]) -> dict:
        match = _matcher(query)
        items = [copy.deepcopy(o) for k, o in sorted(self._objects.items())
                 if k[0] == res.plural and (ns is None or k[1] == ns) and match(o)]
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create(self, res: Resource, ns: str | None, obj: dict, query: dict[str, str]) -> dict:
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(self._rng.choices(_SUFFIX_CHARS, k=5))
        name = meta.get("name") or ""
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise KubeError(400, "BadRequest", "the namespace of the provided object does "
                                "not match the namespace sent on the request")
            meta["namespace"] = ns
            # NamespaceLifecycle admission: no content in missing or terminating namespaces.
            space = self._objects.get(("namespaces", "", ns or ""))
            if space is None:
                raise KubeError(404, "NotFound", f'namespaces "{ns}" not found', ns or "",
                                RESOURCES["namespaces"])
            if space["metadata"].get("deletionTimestamp"):
                raise KubeError(403, "Forbidden", f'{res.qualified} "{name}" is forbidden: '
                                f"unable to create new content in namespace {ns} because it "
                                "is being terminated", name, res)
        else:
            meta.pop("namespace", None)
        self._check_kind(res, obj)
        if not name:
            raise KubeError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required "
                            "value: name or generateName is required", "", res)
        self._admit(res, obj, None)
        if self._key(res, ns, name) in self._objects:
            raise KubeError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                            name, res)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if res.plural not in _STATUS_IN_MAIN or res.plural == "namespaces":
            obj["status"] = copy.deepcopy(_INITIAL_STATUS.get(res.plural, {}))  # controllers' now
        if query.get("dryRun") == "All":
            return obj
        return self._commit(res, obj, "ADDED")

    @staticmethod
    def _check_kind(res: Resource, obj: dict) -> None:
        for key, want in (("apiVersion", res.api_version), ("kind", res.kind)):
            if obj.get(key) not in (None, "", want):
                raise KubeError(400, "BadRequest", f"the {key} in the data ({obj[key]}) does "
                                f"not match the expected {key} ({want})")
            obj[key] = want

    def _admit(self, res: Resource, obj: dict, old: dict | None) -> None:
        """Defaults and the validation callers most often trip over (422 Invalid)."""
        name = obj["metadata"]["name"]

        def invalid(message: str) -> KubeError:
            return KubeError(422, "Invalid", f'{res.kind} "{name}" is invalid: {message}', name,
                             res)

        label_like = res.plural in ("namespaces", "services")
        if len(name) > (63 if label_like else 253) or \
                not (_DNS_LABEL if label_like else _DNS_SUBDOMAIN).match(name):
            raise invalid(f'metadata.name: Invalid value: "{name}": must be a lowercase RFC '
                          f"1123 {'label' if label_like else 'subdomain'}")
        for key, value in _labels(obj).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                raise invalid(f'metadata.labels: Invalid value: "{value}": a valid label value '
                              "must be 63 characters or less, alphanumeric, '-', '_' or '.'")
            if len(key.rpartition("/")[2]) > 63:
                raise invalid(f'metadata.labels: Invalid value: "{key}": name part must be no '
                              "more than 63 characters")
        spec = obj.setdefault("spec", {}) if res.plural not in _STATUS_IN_MAIN else {}
        old_spec = (old or {}).get("spec") or {}
        if res.plural == "pods" and not spec.get("containers"):
            raise invalid("spec.containers: Required value")
        if res.plural in ("deployments", "replicasets"):
            spec.setdefault("replicas", 1)
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            template_labels = _labels(spec.get("template") or {})
            if not selector or any(template_labels.get(k) != v for k, v in selector.items()):
                raise invalid("spec.template.metadata.labels: Invalid value: "
                              f"{template_labels}: `selector` does not match template `labels`")
        if res.plural == "jobs":
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
            if policy not in ("Never", "OnFailure"):
                raise invalid('spec.template.spec.restartPolicy: Required value: valid values: '
                              '"OnFailure", "Never"')
        if res.plural == "services":
            spec.setdefault("type", "ClusterIP")
            if not spec.get("clusterIP"):
                n = next(self._cluster_ips)
                spec["clusterIP"] = old_spec.get("clusterIP") or f"10.96.{n // 250}.{n % 250 + 1}"
            spec["clusterIPs"] = [spec["clusterIP"]]
            old_ports = {p.get("port"): p for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
                if spec["type"] in ("LoadBalancer", "NodePort") and not port.get("nodePort"):
                    port["nodePort"] = old_ports.get(port.get("port"), {}).get("nodePort") \
                        or next(self._node_ports)
        if res.plural == "secrets" and obj.get("stringData"):  # the API stores only data
            obj.setdefault("data", {}).update({
                k: base64.b64encode(str(v).encode()).decode()
                for k, v in obj.pop("stringData").items()})

    def _replace(self, res: Resource, ns: str | None, name: str, sub: str | None, obj: dict,
                 query: dict[str, str]) -> dict:
        current = self._stored(res, ns, name)
        if _meta(obj).get("name", name) != name:
            raise KubeError(400, "BadRequest", f"the name of the object ({obj['metadata']['name']})"
                            f" does not match the name on the URL ({name})")
        obj["metadata"]["name"] = name
        return self._update(res, current, copy.deepcopy(obj), sub, query)

    def _update(self, res: Resource, current: dict, new: dict, sub: str | None,
                query: dict[str, str]) -> dict:
        want = _meta(new).get("resourceVersion")
        if want and want != current["metadata"]["resourceVersion"]:
            raise _conflict(res, current["metadata"]["name"])
        if sub == "status":
            status = new.get("status") or {}
            new = copy.deepcopy(current)
            new["status"] = status
        else:
            self._check_kind(res, new)
            meta, old_meta = new["metadata"], current["metadata"]
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "namespace",
                        "deletionGracePeriodSeconds", "generation"):
                meta.pop(key, None)
                if key in old_meta:
                    meta[key] = old_meta[key]
            if res.plural not in _STATUS_IN_MAIN:
                new["status"] = copy.deepcopy(current.get("status") or {})
            self._admit(res, new, current)
            if _spec_part(new) != _spec_part(current):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if query.get("dryRun") == "All" or _same(new, current):
            return new
        return self._commit(res, new, "MODIFIED")

    def _patch(self, res: Resource, ns: str | None, name: str, sub: str | None,
               query: dict[str, str], body: bytes, ctype: str) -> tuple[int, dict, str]:
        kind = ctype.split(";")[0].strip()
        current = self._objects.get(self._key(res, ns, name))
        if kind == "application/apply-patch+yaml":
            if not query.get("fieldManager"):
                raise KubeError(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: '
                                "fieldManager: Required value: is required for apply patch")
            try:
                patch = yaml.safe_load(body or b"")  # JSON is YAML too
            except yaml.YAMLError as exc:
                raise KubeError(400, "BadRequest", f"invalid YAML body: {exc}") from None
            if not isinstance(patch, dict) or not patch.get("apiVersion") or not patch.get("kind"):
                raise KubeError(400, "BadRequest", "apply needs an object with apiVersion and kind")
            if _meta(patch).get("name", name) != name:
                raise KubeError(400, "BadRequest", "the name in the body does not match the URL")
            if current is None and sub is None:
                patch["metadata"]["name"] = name
                return 201, self._create(res, ns, patch, query), JSON
        elif kind in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            patch = self._json(body, dict)
        elif kind == "application/json-patch+json":
            patch = self._json(body, list)
        else:
            raise KubeError(415, "UnsupportedMediaType",
                            "the body of the request was in an unknown format - accepted media "
                            "types include: application/json-patch+json, "
                            "application/merge-patch+json, application/apply-patch+yaml")
        if current is None:
            raise _not_found(res, name)
        if isinstance(patch, list):
            try:
                merged = json_patch(current, patch)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise KubeError(422, "Invalid", f"the server rejected our request due to an "
                                f"error in our request: {exc}", name, res) from None
        else:
            merged = merge_patch(copy.deepcopy(current), patch)
        if not isinstance(merged, dict) or _meta(merged).get("name") != name:
            raise KubeError(400, "BadRequest", "a patch may not change the object's name")
        return 200, self._update(res, current, merged, sub, query), JSON

    def _delete(self, res: Resource, ns: str | None, name: str, dry: bool = False) -> dict:
        """Delete as the API does: pods and namespaces are only marked (their removal is the
        controller's), everything else goes at once."""
        obj = copy.deepcopy(self._stored(res, ns, name))
        if dry or obj["metadata"].get("deletionTimestamp"):
            return obj
        if res.plural not in ("pods", "namespaces"):
            return self._commit(res, obj, "DELETED")
        obj["metadata"]["deletionTimestamp"] = _now()
        if res.plural == "pods":
            grace = obj.get("spec", {}).get("terminationGracePeriodSeconds", 30)
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
        else:
            obj.setdefault("status", {})["phase"] = "Terminating"
        return self._commit(res, obj, "MODIFIED")

    def _log(self, ns: str, name: str, query: dict[str, str]) -> str:
        pod = self._stored(RESOURCES["pods"], ns, name)
        containers = [c.get("name") for c in pod.get("spec", {}).get("containers") or []]
        container = query.get("container")
        if not container and len(containers) > 1:
            raise KubeError(400, "BadRequest", f"a container name must be specified for pod "
                            f"{name}, choose one of: [{' '.join(containers)}]")
        container = container or (containers[0] if containers else "")
        if container not in containers:
            raise KubeError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        previous = _truthy(query.get("previous", ""))
        text = self._logs.get((ns, name, previous))
        if text is None:
            if previous:
                raise KubeError(400, "BadRequest", f'previous terminated container "{container}"'
                                f' in pod "{name}" not found')
            if pod.get("status", {}).get("phase", "Pending") == "Pending":
                raise KubeError(400, "BadRequest", f'container "{container}" in pod "{name}" '
                                "is waiting to start: ContainerCreating")
            text = ""
        if query.get("tailLines"):
            keep = max(0, int(query["tailLines"]))
            text = "".join(text.splitlines(keepends=True)[-keep:]) if keep else ""
        return text

    # ------------------------------------------------------------------ watch

    def _watch(self, res: Resource, ns: str | None, query: dict[str, str]) -> Iterator[bytes]:
        """Start a watch (caller holds the lock): the initial state is taken now, the stream
        runs in the handler thread without the lock."""
        match = _matcher(query)
        timeout = min(float(query.get("timeoutSeconds") or WATCH_TIMEOUT), WATCH_TIMEOUT)
        since = query.get("resourceVersion") or "0"
        if not since.isdigit():
            raise KubeError(400, "BadRequest", f"invalid resource version: {since!r}")
        gone = self.faults.gone_watches > 0 or (since != "0" and int(since) < self._dropped)
        if self.faults.gone_watches > 0:
            self.faults.gone_watches -= 1
        if gone:
            return _lines([("ERROR", _gone())])

        def relevant(plural: str, obj: dict) -> bool:
            return plural == res.plural and match(obj) and \
                (ns is None or obj["metadata"].get("namespace") == ns)

        initial: list[tuple[str, dict]] = []
        if since == "0":  # "any": the current state as ADDED events, then what changes
            initial = [("ADDED", copy.deepcopy(o)) for k, o in sorted(self._objects.items())
                       if relevant(k[0], o)]
        cursor = self._rv if since == "0" else int(since)
        return self._stream(initial, cursor, relevant, time.monotonic() + timeout)

    def _stream(self, initial: list[tuple[str, dict]], cursor: int,
                relevant: Callable[[str, dict], bool], deadline: float) -> Iterator[bytes]:
        yield from _lines(initial)
        while True:
            with self._changed:
                batch: list[tuple[str, dict]] = []
                while not batch:
                    if self._stopped:
                        return
                    if cursor < self._dropped:  # this watcher fell behind the history
                        batch = [("ERROR", _gone())]
                        break
                    for rv, plural, kind, obj in reversed(self._events):
                        if rv <= cursor:
                            break
                        if relevant(plural, obj):
                            batch.insert(0, (kind, obj))
                    cursor = max(cursor, self._events[-1][0] if self._events else 0)
                    remaining = deadline - time.monotonic()
                    if not batch:
                        if remaining <= 0:
                            return
                        self._changed.wait(remaining)
            yield from _lines(batch)  # outside the lock: the client may read slowly
            if batch[0][0] == "ERROR":
                return


class _Handler(EmulatorHandler):
    emulator: KubeEmulator

    def _serve(self) -> None:
        try:
            status, payload, ctype = self.emulator.handle(*self.request_parts())
        except Exception as exc:  # an emulator bug: answer 500 rather than hang the client
            status, ctype = 500, JSON
            payload = KubeError(500, "InternalError", f"emulator: {exc!r}").body()
        if isinstance(payload, Generator):
            self._stream(payload)
            return
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8" if ctype != JSON else JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Generator[bytes, None, None]) -> None:
        """A watch: one chunk per event, so the client sees each as it happens."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for line in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away (Watch.stop shuts the socket down)
            pass
        finally:
            events.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# ============================================================================ controller

LWS = "leaderworkerset.sigs.k8s.io/"
LB_ADDRESS_TYPE = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type"


def _condition(old: list[dict] | None, kind: str, ok: bool, reason: str = "",
               message: str = "") -> dict:
    """A condition that is kept as it was while its status and reason hold, so an unchanged
    status is a no-op write rather than a watch event every step."""
    status = "True" if ok else "False"
    for cond in old or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (kind, status, reason):
            return cond
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": _now()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _deleting(obj: dict) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _phase(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase") or ""


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _address(prefix: str, n: int) -> str:
    return f"{prefix}.{n // 250 % 250}.{n % 250 + 1}"


def _go_duration(seconds: float) -> str:
    h, m, s = int(seconds) // 3600, int(seconds) // 60 % 60, int(seconds) % 60
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s"


class KubeController:
    """Plays the cluster's controllers and kubelets over a :class:`KubeEmulator`.

    Each :meth:`step` is one reconcile pass over everything, made under the emulator's lock
    (so it is atomic to API clients). ``pod_ip``, ``lb_address`` and ``job_result`` run under
    that lock and must not call the API over HTTP; ``on_pod_running``/``_deleted``/``_crashed`` run
    after the step has released it, and may.
    """

    def __init__(self, emu: KubeEmulator, *, pod_ready_steps: int = 1, job_steps: int = 1,
                 dataload_steps: int = 2, lb_steps: int = 1, pod_terminate_steps: int = 1,
                 pod_ip: Callable[[dict], str] | None = None,
                 lb_address: Callable[[dict], str] | None = None,
                 job_result: Callable[[dict], tuple[int, str]] | None = None,
                 on_pod_running: Callable[[dict], None] | None = None,
                 on_pod_deleted: Callable[[dict], None] | None = None,
                 on_pod_crashed: Callable[[dict], None] | None = None):
        self.emu = emu
        self.pod_ready_steps, self.job_steps = pod_ready_steps, job_steps
        self.dataload_steps, self.lb_steps = dataload_steps, lb_steps
        self.pod_terminate_steps = pod_terminate_steps
        self.pod_ip, self.lb_address, self.job_result = pod_ip, lb_address, job_result
        self.on_pod_running, self.on_pod_deleted = on_pod_running, on_pod_deleted
        self.on_pod_crashed = on_pod_crashed  # its container exited: whatever it served stops
        self.fail_dataloads = 0
        self.crash_loop: set[str] = set()  # pod name prefixes (restartPolicy Always pods)
        self.crash_log = "Error: the engine exited with code 1 (emulated crash loop)\n"
        self.lb_never_ready: set[str] = set()
        self.unschedulable: set[str] = set()
        self.steps = 0
        self.errors: list[Exception] = []  # what background steps raised
        self._ticks: collections.Counter[str] = collections.Counter()  # uid -> steps seen
        self._dying: collections.Counter[str] = collections.Counter()  # uid -> steps deleting
        self._loads: dict[str, tuple[int, float, bool]] = {}  # uid -> (step, start, fails)
        self._recommendations: dict[str, list[tuple[float, int]]] = {}  # HPA uid -> (time, replicas)
        self._noted: set[tuple[str, str]] = set()  # (uid, reason) of recorded Events
        self._rng = random.Random(1)
        self._pod_ips, self._lb_ips = itertools.count(1), itertools.count(1)
        self._callbacks: list[Callable[[], None]] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval: float = 0.05) -> KubeController:
        if self._thread is None:
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, args=(interval,),
                                            name="kube-controller", daemon=True)
            self._thread.start()
        return self

    def _loop(self, interval: float) -> None:
        while not self._halt.wait(interval):
            try:
                self.step()
            except Exception as exc:  # keep reconciling, as a controller does; tests check
                self.errors.append(exc)

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> KubeController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step(self) -> None:
        with self.emu.lock:
            self.steps += 1
            self._pods()  # kubelets first: a pod made or deleted now changes in the next step
            self._namespaces()
            self._collect_garbage()
            for plural, reconcile in (
                ("scaledobjects", self._keda), ("horizontalpodautoscalers", self._hpa),
                ("deployments", self._deployment), ("leaderworkersets", self._lws),
                ("jobs", self._job), ("jindoruntimes", self._runtime),
                ("datasets", self._dataset), ("dataloads", self._dataload),
                ("services", self._service),
            ):
                for obj in self.emu.list(plural):
                    reconcile(obj)
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    # ------------------------------------------------------------------ helpers

    def _set_status(self, obj: dict, status: dict) -> dict:
        if obj.get("status") != status:
            obj = self.emu.put({**obj, "status": status})
        return obj

    def _delete(self, obj: dict) -> None:
        res = _BY_KIND[(obj["apiVersion"], obj["kind"])]
        self.emu._delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _owned(self, owner: dict) -> list[dict]:
        """The owner's pods that are not being deleted."""
        uid = owner["metadata"]["uid"]
        return [p for p in self.emu.list("pods", owner["metadata"]["namespace"])
                if not _deleting(p) and any(
                    r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    def _make_pod(self, owner: dict, name: str, template: dict, labels: dict[str, str],
                  env: list[dict] | None = None) -> None:
        meta, spec = template.get("metadata") or {}, copy.deepcopy(template.get("spec") or {})
        added = {e["name"] for e in env or []}
        for container in spec.get("containers") or []:  # env appended, as LWS's webhook does
            if env:
                container["env"] = [e for e in container.get("env") or []
                                    if e.get("name") not in added] + copy.deepcopy(env)
        self.emu.put({
            "apiVersion": "v1", "kind": "Pod", "spec": spec, "status": {"phase": "Pending"},
            "metadata": {
                "name": name, "namespace": owner["metadata"]["namespace"],
                "labels": {**(meta.get("labels") or {}), **labels},
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [{
                    "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": True, "blockOwnerDeletion": True}]},
        })

    def _suffix(self) -> str:
        return "".join(self._rng.choices(_SUFFIX_CHARS, k=5))

    def _event(self, obj: dict, reason: str, message: str, source: str) -> None:
        """A Warning Event, once per object and reason, for `kubectl describe` readers."""
        meta = obj["metadata"]
        if (meta["uid"], reason) in self._noted:
            return
        self._noted.add((meta["uid"], reason))
        self.emu.put({
            "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": reason,
            "message": message, "count": 1, "source": {"component": source},
            "firstTimestamp": _now(), "lastTimestamp": _now(),
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
        })

    # ------------------------------------------------------------------ namespaces, GC

    def _namespaces(self) -> None:
        for space in self.emu.list("namespaces"):
            if not _deleting(space):
                continue
            name = space["metadata"]["name"]
            left = [o for r in RESOURCES.values() if r.namespaced
                    for o in self.emu.list(r.plural, name)]
            for obj in left:
                self._delete(obj)  # pods only get marked; _pods removes them in a later step
            if not left:
                self.emu.remove("namespaces", None, name)

    def _collect_garbage(self) -> None:
        """Delete what all of whose owners are gone (Kubernetes' background cascade)."""
        uids = {o["metadata"].get("uid") for o in self.emu._objects.values()}
        for res in RESOURCES.values():
            for obj in self.emu.list(res.plural):
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not _deleting(obj) and not any(r.get("uid") in uids for r in refs):
                    self._delete(obj)

    # ------------------------------------------------------------------ workloads

    def _deployment(self, dep: dict) -> None:
        spec, name = dep.get("spec") or {}, dep["metadata"]["name"]
        want, template = int(spec.get("replicas", 1)), spec.get("template") or {}
        digest = _digest(template)
        pods = self._owned(dep)
        current = [p for p in pods if _labels(p).get("pod-template-hash") == digest]
        # Recreate, not rolling: the old template's pods go as the new ones are made.
        for pod in [p for p in pods if p not in current] + current[want:]:
            self._delete(pod)
        for _ in range(want - len(current)):
            self._make_pod(dep, f"{name}-{digest}-{self._suffix()}", template,
                           {"pod-template-hash": digest})
        pods = self._owned(dep)
        ready = sum(1 for p in pods if _ready(p))
        old, ok = (dep.get("status") or {}).get("conditions"), ready >= want
        done = ok and len(pods) == want
        counts = {"replicas": len(pods), "updatedReplicas": len(pods), "readyReplicas": ready,
                  "availableReplicas": ready, "unavailableReplicas": max(0, want - ready)}
        self._set_status(dep, {
            "observedGeneration": dep["metadata"].get("generation", 1),
            **{k: v for k, v in counts.items() if v},  # the API leaves out zero counts
            "conditions": [
                _condition(old, "Available", ok, "MinimumReplicas" + (
                    "Available" if ok else "Unavailable"),
                    f"Deployment {'has' if ok else 'does not have'} minimum availability."),
                _condition(old, "Progressing", True, "NewReplicaSetAvailable" if done else
                           "ReplicaSetUpdated", f'ReplicaSet "{name}-{digest}" is progressing.'),
            ],
        })

    def _lws(self, lws: dict) -> None:
        spec, meta = lws.get("spec") or {}, lws["metadata"]
        name, ns = meta["name"], meta["namespace"]
        tmpl = spec.get("leaderWorkerTemplate") or {}
        groups, size, rev = int(spec.get("replicas", 1)), int(tmpl.get("size", 1)), _digest(tmpl)
        existing = {p["metadata"]["name"]: p for p in self._owned(lws)}
        wanted = set()
        for g, w in itertools.product(range(groups), range(size)):
            pod_name = f"{name}-{g}-{w}" if w else f"{name}-{g}"
            wanted.add(pod_name)
            if pod_name in existing:
                if _labels(existing[pod_name]).get(f"{LWS}template-revision-hash") != rev:
                    self._delete(existing[pod_name])  # remade once it is gone: names are fixed
                continue
            if self.emu.get("pods", ns, pod_name):  # the old one is still terminating
                continue
            template = (not w and tmpl.get("leaderTemplate")) or tmpl.get("workerTemplate") or {}
            self._make_pod(lws, pod_name, template, {
                f"{LWS}name": name, f"{LWS}group-index": str(g), f"{LWS}worker-index": str(w),
                f"{LWS}template-revision-hash": rev,
            }, env=[{"name": "LWS_LEADER_ADDRESS", "value": f"{name}-{g}.{name}.{ns}"},
                    {"name": "LWS_GROUP_SIZE", "value": str(size)},
                    {"name": "LWS_WORKER_INDEX", "value": str(w)}])
        for pod_name, pod in existing.items():
            if pod_name not in wanted:
                self._delete(pod)
        members = collections.defaultdict(list)
        for pod in self._owned(lws):
            members[_labels(pod).get(f"{LWS}group-index")].append(pod)
        full = [m for g in range(groups) if len(m := members[str(g)]) == size]
        ready = sum(1 for m in full if all(_ready(p) for p in m))
        updated = sum(1 for m in full
                      if all(_labels(p).get(f"{LWS}template-revision-hash") == rev for p in m))
        old = (lws.get("status") or {}).get("conditions")
        self._set_status(lws, {
            "replicas": sum(1 for g in range(groups) if members[str(g)]),
            "readyReplicas": ready, "updatedReplicas": updated,
            # The scale subresource's selector: the leaders, which serve (and expose metrics).
            "hpaPodSelector": f"{LWS}name={name},{LWS}worker-index=0",
            "conditions": [_condition(old, "Available", ready >= groups, "AllGroupsReady"
                                      if ready >= groups else "GroupsNotReady",
                                      f"{ready}/{groups} groups are ready")],
        })

    def _job(self, job: dict) -> None:
        status = dict(job.get("status") or {})
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or []):
            return
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        limit = int(job["spec"].get("backoffLimit", 6))
        phases = [_phase(p) for p in self._owned(job)]
        done, failed = "Succeeded" in phases, phases.count("Failed")
        if not done and failed <= limit and not {"Pending", "Running"} & set(phases):
            self._make_pod(job, f"{name}-{self._suffix()}", job["spec"]["template"], {
                "job-name": name, "batch.kubernetes.io/job-name": name,
                "controller-uid": uid, "batch.kubernetes.io/controller-uid": uid})
            phases.append("Pending")
        counts = {"active": sum(1 for ph in phases if ph in ("Pending", "Running")),
                  "succeeded": phases.count("Succeeded"), "failed": failed}
        status = {k: v for k, v in status.items() if k not in counts}
        status.update({k: v for k, v in counts.items() if v})  # the API leaves out zeros
        status.setdefault("startTime", _now())
        if done:
            status["completionTime"] = _now()
            status["conditions"] = [_condition(None, "Complete", True, "Completed",
                                               "Reached expected number of succeeded pods")]
        elif failed > limit:
            status["conditions"] = [_condition(None, "Failed", True, "BackoffLimitExceeded",
                                               "Job has reached the specified backoff limit")]
        self._set_status(job, status)

    # ------------------------------------------------------------------ autoscaling

    def _scale_selector(self, target: dict) -> Callable[[dict], bool]:
        if target["kind"] == "LeaderWorkerSet":
            labels = label_selector((target.get("status") or {}).get("hpaPodSelector")
                                    or f"{LWS}name={target['metadata']['name']},{LWS}worker-index=0")
            return lambda pod: labels(_labels(pod))
        wanted = ((target.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return lambda pod: all(_labels(pod).get(k) == v for k, v in wanted.items())

    def _keda(self, scaled: dict) -> None:
        """KEDA's operator: the ScaledObject's HPA, one External metric per trigger."""
        spec, meta = scaled.get("spec") or {}, scaled["metadata"]
        name = meta["name"]
        ref = {"apiVersion": "apps/v1", "kind": "Deployment", **(spec.get("scaleTargetRef") or {})}
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
        hpa_spec = {
            "scaleTargetRef": ref, "minReplicas": int(spec.get("minReplicaCount", 1)),
            "maxReplicas": int(spec.get("maxReplicaCount", 100)),
            "metrics": [{"type": "External", "external": {
                "metric": {"name": f"s{i}-{t.get('type')}",
                           "selector": {"matchLabels": {"scaledobject.keda.sh/name": name}}},
                "target": {"type": "AverageValue", "averageValue": str((t.get("metadata") or {}).get(
                    "threshold", "1"))}}} for i, t in enumerate(spec.get("triggers") or [])],
            **({"behavior": behavior} if behavior else {})}
        hpa_name = f"keda-hpa-{name}"
        current = self.emu.get("horizontalpodautoscalers", meta["namespace"], hpa_name)
        if current is None or current.get("spec") != hpa_spec:
            self.emu.put({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "spec": hpa_spec,
                "status": (current or {}).get("status") or {"currentReplicas": 0, "desiredReplicas": 0},
                "metadata": {
                    "name": hpa_name, "namespace": meta["namespace"],
                    "labels": {**(meta.get("labels") or {}), "app.kubernetes.io/managed-by": "keda-operator",
                               "scaledobject.keda.sh/name": name},
                    "ownerReferences": [{"apiVersion": scaled["apiVersion"], "kind": "ScaledObject",
                                         "name": name, "uid": meta["uid"], "controller": True,
                                         "blockOwnerDeletion": True}]}})
        self._set_status(scaled, {"hpaName": hpa_name, "scaleTargetKind": f"{ref['apiVersion']}.{ref['kind']}",
                                  "conditions": [_condition((scaled.get("status") or {}).get("conditions"),
                                                            "Ready", True, "ScaledObjectReady",
                                                            "ScaledObject is defined correctly and is ready for scaling")]})

    def _external(self, ns: str, metric: dict) -> float | None:
        """KEDA's metrics server: s<i>-<type> of a ScaledObject is its trigger i, run now."""
        owner = ((metric.get("selector") or {}).get("matchLabels") or {}).get("scaledobject.keda.sh/name")
        scaled = self.emu.get("scaledobjects", ns, owner or "")
        index = re.match(r"^s(\d+)-", metric.get("name", ""))
        triggers = ((scaled or {}).get("spec") or {}).get("triggers") or []
        if not index or int(index.group(1)) >= len(triggers):
            return None
        trigger = triggers[int(index.group(1))]
        if trigger.get("type") != "prometheus":
            return None
        return self.emu.prometheus_query((trigger.get("metadata") or {}).get("query", ""))

    def _hpa(self, hpa: dict) -> None:
        """The HPA controller on ``Pods`` and ``External`` metrics: desired = ceil(current *
        value / target) per metric (no change within the tolerance; an External AverageValue
        target is per replica), the largest wins, clamped to min/max and stabilized by
        ``behavior`` (scale-down looks back 300 s unless told otherwise)."""
        spec, meta = hpa.get("spec") or {}, hpa["metadata"]
        ns, ref = meta["namespace"], spec.get("scaleTargetRef") or {}
        res = _BY_KIND.get((ref.get("apiVersion"), ref.get("kind")))
        target = self.emu.get(res.plural, ns, ref.get("name", "")) if res else None
        old = (hpa.get("status") or {}).get("conditions")
        if target is None:
            self._set_status(hpa, {**(hpa.get("status") or {}), "conditions": [_condition(
                old, "AbleToScale", False, "FailedGetScale",
                f"the HPA controller was unable to get the target's current scale: {ref}")]})
            return
        current = int((target.get("spec") or {}).get("replicas", 1))
        lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        match = self._scale_selector(target)
        proposals, observed = [], []
        for m in spec.get("metrics") or []:
            if m.get("type") == "Pods":
                name = m["pods"]["metric"]["name"]
                values = self.emu.pod_metrics(ns, name, match)
                if not values:
                    continue
                average = sum(values.values()) / len(values)
                ratio = average / parse_quantity(m["pods"]["target"]["averageValue"])
                observed.append({"type": "Pods", "pods": {"metric": {"name": name},
                                                          "current": {"averageValue": _milli(average)}}})
            elif m.get("type") == "External":
                total = self._external(ns, m["external"]["metric"])
                if total is None or current == 0:
                    continue
                target_value = m["external"]["target"]
                ratio = total / parse_quantity(target_value.get("averageValue") or target_value["value"]) \
                    / (current if target_value.get("averageValue") else 1)
                observed.append({"type": "External", "external": {
                    "metric": m["external"]["metric"], "current": {"averageValue": _milli(total / current)}}})
            else:
                continue
            proposals.append(current if abs(1 - ratio) <= HPA_TOLERANCE else math.ceil(current * ratio))
        if current == 0:  # scaled to zero by hand: the HPA leaves it alone
            return
        desired = self._stabilize(hpa, min(max(max(proposals, default=current), lo), hi), current)
        status = {**(hpa.get("status") or {}), "currentReplicas": current, "desiredReplicas": desired,
                  "currentMetrics": observed, "observedGeneration": meta.get("generation", 1)}
        if desired != current:
            scaled = copy.deepcopy(target)
            scaled["spec"]["replicas"] = desired
            scaled["metadata"]["generation"] = int(scaled["metadata"].get("generation", 1)) + 1
            self.emu.put(scaled)
            status["lastScaleTime"] = _now()
            self._noted.discard((meta["uid"], "SuccessfulRescale"))
            self._event(hpa, "SuccessfulRescale", f"New size: {desired}; reason: "
                        f"{'above' if desired > current else 'below'} target", "horizontal-pod-autoscaler")
        status["conditions"] = [
            _condition(old, "AbleToScale", True, "SucceededRescale" if desired != current else "ReadyForNewScale"),
            _condition(old, "ScalingActive", bool(observed), "ValidMetricFound" if observed
                       else "FailedGetPodsMetric")]
        self._set_status(hpa, status)

    def _stabilize(self, hpa: dict, desired: int, current: int) -> int:
        """Kubernetes' stabilization: up to the lowest, down to the highest recommendation
        within each direction's window."""
        behavior = (hpa.get("spec") or {}).get("behavior") or {}
        up = float((behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0))
        down = float((behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds", 300))
        now = time.monotonic()
        recs = [r for r in self._recommendations.get(hpa["metadata"]["uid"], []) if now - r[0] <= max(up, down)]
        recs.append((now, desired))
        self._recommendations[hpa["metadata"]["uid"]] = recs
        up_rec = min(r for t, r in recs if now - t <= up)
        down_rec = max(r for t, r in recs if now - t <= down)
        return min(max(current, up_rec), down_rec)

    # ------------------------------------------------------------------ pods (kubelets)

    def _pods(self) -> None:
        nodes = self.emu.list("nodes")
        for pod in self.emu.list("pods"):
            meta = pod["metadata"]
            uid, name, ns = meta["uid"], meta["name"], meta["namespace"]
            if _deleting(pod):
                self._dying[uid] += 1
                if self._dying[uid] >= self.pod_terminate_steps:
                    self.emu.remove("pods", ns, name)
                    self._ticks.pop(uid, None)
                    self._dying.pop(uid, None)
                    if self.on_pod_deleted:
                        self._callbacks.append(functools.partial(self.on_pod_deleted, pod))
                continue
            if _phase(pod) in ("Succeeded", "Failed"):
                continue
            self._ticks[uid] += 1
            if name.startswith(tuple(self.unschedulable)):
                message = f"0/{len(nodes)} nodes are available: insufficient nvidia.com/gpu"
                self._set_status(pod, {"phase": "Pending", "conditions": [_condition(
                    pod["status"].get("conditions"), "PodScheduled", False, "Unschedulable",
                    message)]})
                self._event(pod, "FailedScheduling", message, "default-scheduler")
            elif self._ticks[uid] < self.pod_ready_steps:
                continue
            elif name.startswith(tuple(self.crash_loop)) \
                    and pod["spec"].get("restartPolicy", "Always") == "Always":
                # Only restarting pods loop; a Job's pod (Never) ends as job_result says.
                self._run(pod, nodes, crash=True)
                if self.on_pod_crashed:
                    self._callbacks.append(functools.partial(self.on_pod_crashed, pod))
                self.emu.set_pod_log(ns, name, self.crash_log, previous=True)
                self._event(pod, "BackOff", "Back-off restarting failed container", "kubelet")
            else:
                if not _ready(pod):  # starting, or no longer told to crash-loop
                    pod = self._run(pod, nodes)
                    if self.on_pod_running:
                        self._callbacks.append(functools.partial(self.on_pod_running, pod))
                job = next((r["name"] for r in meta.get("ownerReferences") or []
                            if r.get("kind") == "Job"), None)
                if job and self._ticks[uid] >= self.pod_ready_steps + self.job_steps:
                    self._finish(pod, self.emu.get("jobs", ns, job))

    def _run(self, pod: dict, nodes: list[dict], crash: bool = False) -> dict:
        """Running (kept if it was): healthy, or with its containers restarting every step."""
        status, now = pod.get("status") or {}, _now()
        if not status.get("podIP"):
            ip = self.pod_ip(pod) if self.pod_ip else _address("10.1", next(self._pod_ips))
            host = ip  # on ACS each pod is its own sandbox VM: hostIP is the pod's address
            if nodes:
                node = nodes[int(_digest(pod["metadata"]["name"]), 16) % len(nodes)]
                pod["spec"]["nodeName"] = node["metadata"]["name"]
                host = node["status"]["addresses"][0]["address"]
            status = {"podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host,
                      "hostIPs": [{"ip": host}], "startTime": now}
        old = {c["name"]: c for c in status.get("containerStatuses") or []}
        containers = []
        for c in pod["spec"].get("containers") or []:
            name = c.get("name", "")
            entry = {"name": name, "image": c.get("image", ""),
                     "imageID": f"sha256:{_digest(c.get('image'))}", "ready": not crash,
                     "started": not crash,
                     "restartCount": old.get(name, {}).get("restartCount", 0) + crash,
                     "containerID": f"containerd://{_digest([pod['metadata']['uid'], c])}",
                     "state": {"running": {"startedAt": now}}}
            if crash:
                entry["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"
                                              f" restarting failed container={name} pod="
                                              f"{pod['metadata']['name']}"}}
                entry["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error",
                                                     "startedAt": now, "finishedAt": now}}
            containers.append(entry)
        conds, why = status.get("conditions"), "" if not crash else "ContainersNotReady"
        return self._set_status(pod, {
            **{k: status[k] for k in ("podIP", "podIPs", "hostIP", "hostIPs", "startTime")},
            "phase": "Running", "qosClass": "BestEffort", "containerStatuses": containers,
            "conditions": [_condition(conds, "PodScheduled", True),
                           _condition(conds, "Initialized", True),
                           _condition(conds, "ContainersReady", not crash, why),
                           _condition(conds, "Ready", not crash, why)]})

    def _finish(self, pod: dict, job: dict | None) -> None:
        """A Job's pod exits with what ``job_result`` says."""
        if job is None:  # its Job is gone; garbage collection takes the pod
            return
        code, log = self.job_result(job) if self.job_result else (0, "")
        self.emu.set_pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], log)
        now, reason = _now(), "PodFailed" if code else "PodCompleted"
        status = dict(pod["status"], phase="Failed" if code else "Succeeded", conditions=[
            _condition(None, kind, ok, "" if ok else reason) for kind, ok in (
                ("PodScheduled", True), ("Initialized", True), ("ContainersReady", False),
                ("Ready", False))])
        status["containerStatuses"] = [
            {**c, "ready": False, "started": False, "state": {"terminated": {
                "exitCode": code, "reason": "Error" if code else "Completed",
                "startedAt": c.get("state", {}).get("running", {}).get("startedAt", now),
                "finishedAt": now}}} for c in status.get("containerStatuses") or []]
        self._set_status(pod, status)

    # ------------------------------------------------------------------ Fluid, services

    def _runtime(self, rt: dict) -> None:
        workers = int((rt.get("spec") or {}).get("replicas", 1))
        self._set_status(rt, {**(rt.get("status") or {}), "masterPhase": "Ready",
                              "workerPhase": "Ready", "fusePhase": "Ready",
                              "desiredWorkerNumberScheduled": workers,
                              "currentWorkerNumberScheduled": workers,
                              "workerNumberReady": workers})

    def _dataset(self, ds: dict) -> None:
        name, ns = ds["metadata"]["name"], ds["metadata"]["namespace"]
        if _phase(ds) == "Bound":
            return
        if self.emu.get("jindoruntimes", ns, name) is None:
            self._set_status(ds, {**(ds.get("status") or {}), "phase": "NotBound"})
            return
        self._set_status(ds, {
            "phase": "Bound", "conditions": [_condition(None, "Ready", True, "DatasetReady",
                                                        "The ddc runtime is ready.")],
            "runtimes": [{"name": name, "namespace": ns, "category": "Accelerate",
                          "type": "jindo"}]})
        if self.emu.get("persistentvolumeclaims", ns, name) is None:  # what pods mount
            self.emu.put({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns,
                             "labels": {f"fluid.io/s-{ns}-{name}": "true"}},
                "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "fluid",
                         "volumeName": f"{ns}-{name}",
                         "resources": {"requests": {"storage": "100Pi"}}},
                "status": {"phase": "Bound", "accessModes": ["ReadOnlyMany"],
                           "capacity": {"storage": "100Pi"}}})

    def _dataload(self, load: dict) -> None:
        uid, phase = load["metadata"]["uid"], _phase(load)
        if not phase:
            self._set_status(load, {"phase": "Pending", "conditions": []})
        elif phase == "Pending":
            ref = (load.get("spec") or {}).get("dataset") or {}
            ds = self.emu.get("datasets", ref.get("namespace") or load["metadata"]["namespace"],
                              ref.get("name", ""))
            if ds and _phase(ds) == "Bound":
                fail = self.fail_dataloads > 0  # decided as it starts: "the next N to execute"
                self.fail_dataloads -= fail
                self._loads[uid] = (self.steps, time.monotonic(), fail)
                self._set_status(load, {"phase": "Executing", "conditions": [],
                                        "duration": "Unfinished"})
        elif phase == "Executing":
            step, start, fail = self._loads.setdefault(uid, (self.steps, time.monotonic(), False))
            if self.steps - step < self.dataload_steps:
                return
            cond = {"type": "Failed", "status": "True", "reason": "DataLoadJobFailed",
                    "message": "DataLoad failed: the load job exited with an error"} if fail \
                else {"type": "Complete", "status": "True", "reason": "DataLoadJobComplete",
                      "message": "DataLoad job has completed successfully"}
            self._set_status(load, {
                "phase": cond["type"], "duration": _go_duration(time.monotonic() - start),
                "conditions": [{**cond, "lastProbeTime": _now(), "lastTransitionTime": _now()}]})

    def _service(self, svc: dict) -> None:
        meta = svc["metadata"]
        if (svc.get("spec") or {}).get("type") != "LoadBalancer" \
                or meta["name"] in self.lb_never_ready \
                or (svc.get("status") or {}).get("loadBalancer", {}).get("ingress"):
            return
        self._ticks[meta["uid"]] += 1
        if self._ticks[meta["uid"]] < self.lb_steps:
            return
        if self.lb_address:
            ip = self.lb_address(svc)
        else:
            internal = (meta.get("annotations") or {}).get(LB_ADDRESS_TYPE) == "intranet"
            ip = _address("192.168" if internal else "47.96", next(self._lb_ips))
        self._set_status(svc, {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}})


__all__ = ["CUSTOM_METRICS", "RESOURCES", "Call", "KubeController", "KubeEmulator", "KubeError",
           "KubeFaults", "MetricLoad", "Resource", "parse_quantity", "field_selector", "json_patch", "label_selector", "merge_patch"]


KubeEmulator.handler = _Handler  # defined after the emulator it serves
KubeEmulator.thread_name = "kube-emulator"
