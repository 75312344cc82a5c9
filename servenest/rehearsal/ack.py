"""A whole ACK cluster on this machine: the CS API (cloud emulator), the Kubernetes API
(:mod:`servenest.rehearsal.kubernetes`) with its controllers, and a kubelet that runs each serving
pod's engine as the no-op OpenAI server on the pod's own loopback address.

The kubelet reads what a real one would: the pod's container script (the engine's
``--served-model-name`` and ``--port``) and the API key through the pod's ``secretKeyRef``
from the Secret in the emulated cluster, written to a 0600 file the server reads (never
argv). A LoadBalancer Service's address is the address of the pod it selects, so the
pipeline's gate really goes through "the load balancer" to "the pod".

The weights sync Job really runs: its script (:func:`servenest.k8s.serving.sync_script`) runs
under bash in a sandbox, with ``/work`` rewritten into it, an ``ossutil`` that keeps objects in
a local directory (the "bucket") and a ``modelscope`` that writes a small deterministic model.
So the verify-skip-upload logic is exercised as written, and a second sync finds OSS verified.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servenest.k8s import serving
from servenest.rehearsal.cloud import CloudEmulator
from servenest.rehearsal.ecs import sdk_pointed_at
from servenest.rehearsal.kubernetes import KubeController, KubeEmulator
from servenest.rehearsal.openai_noop import NoopServerProcess

REHEARSAL_TIME_SCALE = "0.01"
H20_NODE_LABELS = {serving.ACK_GPU_NAME_LABEL: "NVIDIA-H20", "aliyun.accelerator/nvidia_count": "8"}


def objects_left(kube: KubeEmulator) -> list[str]:
    """What ServeNest created that is still in the emulated cluster."""
    out = []
    for plural in ("namespaces", "secrets", "services", "pods", "deployments", "jobs", "datasets",
                   "jindoruntimes", "dataloads", "leaderworkersets", "horizontalpodautoscalers",
                   "podmonitors", "scaledobjects"):
        for obj in kube.list(plural):
            if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "servenest":
                out.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return out


def _engine_words(pod: dict) -> list[str]:
    container = pod["spec"]["containers"][0]
    script = (container.get("command") or ["", "", ""])[-1]
    last = [line for line in script.splitlines() if line.startswith("exec ")]
    return shlex.split(last[-1][len("exec "):]) if last else []


def _flag(words: list[str], flag: str, default: str | None = None) -> str | None:
    return words[words.index(flag) + 1] if flag in words and words.index(flag) + 1 < len(words) else default


# Stand-ins for the two CLIs the sync script calls; objects of oss://B/K live in $OSS_ROOT/B/K.
_OSSUTIL = textwrap.dedent("""\
    import os, shutil, sys
    root = os.environ["SERVENEST_EMU_OSS_ROOT"]
    args = sys.argv[1:]
    cmd = args.pop(0)
    exclude = None
    if "--exclude" in args:
        i = args.index("--exclude")
        exclude = args[i + 1].rstrip("*")
        del args[i:i + 2]
    paths = [a for a in args if not a.startswith("-")]
    def local(uri):
        return os.path.join(root, uri[len("oss://"):])
    def missing(uri):
        print(f"Error: oss: service returned error: StatusCode=404, ErrorCode=NoSuchKey, {uri}", file=sys.stderr)
        sys.exit(1)
    if cmd == "stat":
        if not os.path.isfile(local(paths[0])):
            missing(paths[0])
        print(f"Content-Length        : {os.path.getsize(local(paths[0]))}")
    elif cmd == "rm":
        if os.path.isfile(local(paths[0])):
            os.remove(local(paths[0]))
    elif cmd == "cp":
        src, dst = paths
        if src.startswith("oss://"):
            if not os.path.isfile(local(src)):
                missing(src)
            shutil.copyfile(local(src), dst)
        elif os.path.isdir(src):
            for base, _, files in os.walk(src):
                for name in files:
                    if exclude and name.startswith(exclude):
                        continue
                    rel = os.path.relpath(os.path.join(base, name), src)
                    out = os.path.join(local(dst), rel)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    shutil.copyfile(os.path.join(base, name), out)
        else:
            os.makedirs(os.path.dirname(local(dst)), exist_ok=True)
            shutil.copyfile(src, local(dst))
    else:
        sys.exit(f"ossutil stand-in: {cmd} is not emulated")
    """)
_MODELSCOPE = textwrap.dedent("""\
    import hashlib, json, os, sys
    args = sys.argv[1:]
    model, out = args[args.index("--model") + 1], args[args.index("--local_dir") + 1]
    os.makedirs(out, exist_ok=True)
    seed = hashlib.sha256(model.encode()).digest()
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump({"_name_or_path": model}, fh)
    with open(os.path.join(out, "model.safetensors"), "wb") as fh:
        fh.write(seed * 4096)
    with open(os.path.join(out, "tokenizer.json"), "w") as fh:
        json.dump({"model": model}, fh)
    print(f"Downloading Model to directory: {out}")
    """)


class SyncJobRunner:
    """Runs a sync Job's script for the controller (``job_result``) against a local "OSS"."""

    def __init__(self, root: Path):
        self.root = root
        self.oss_root = root / "oss"
        self.bin = root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.oss_root.mkdir(parents=True, exist_ok=True)
        for name, source in (("ossutil", _OSSUTIL), ("modelscope", _MODELSCOPE)):
            tool = self.bin / name
            tool.write_text(f"#!{sys.executable}\n{source}")
            tool.chmod(0o755)

    def __call__(self, job: dict) -> tuple[int, str]:
        script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        sandbox = self.root / "jobs" / job["metadata"]["uid"]
        sandbox.mkdir(parents=True, exist_ok=True)
        env = {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "SERVENEST_EMU_OSS_ROOT": str(self.oss_root), "HOME": str(sandbox), "LC_ALL": "C"}
        try:
            done = subprocess.run(["bash", "-c", script.replace("/work/", f"{sandbox}/work/")], env=env,
                                  cwd=sandbox, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return 124, "servenest rehearsal: the sync script ran over 120 s"
        return done.returncode, done.stdout + done.stderr


class NoopKubelet:
    """Starts the no-op server for serving pods (``servenest/role: serving``); stops it when
    the pod goes. Each pod gets its own 127.0.2.x address, and so does each deployment's
    load-balancer front, where the server listens (the port is the Service's = the pod's)."""

    def __init__(self, emu: KubeEmulator, root: Path):
        self.emu = emu
        self.root = root
        self.servers: dict[str, NoopServerProcess] = {}
        self._addresses = (f"127.0.2.{i}" for i in itertools.count(2))
        self._ips: dict[str, str] = {}
        self._lock = threading.Lock()

    def pod_ip(self, pod: dict) -> str:
        with self._lock:
            uid = pod["metadata"]["uid"]
            if uid not in self._ips:
                self._ips[uid] = next(self._addresses)
            return self._ips[uid]

    def _frontend(self, namespace: str, deployment: str) -> str:
        """One address per deployment, standing for its load balancers: the Services exist
        before the pods run, and their address must not change when the pods do."""
        with self._lock:
            key = f"lb/{namespace}/{deployment}"
            if key not in self._ips:
                self._ips[key] = next(self._addresses)
            return self._ips[key]

    def _key(self, pod: dict, env_name: str) -> str | None:
        for env in pod["spec"]["containers"][0].get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if env["name"] == env_name and ref:
                secret = self.emu.get("secrets", pod["metadata"]["namespace"], ref["name"]) or {}
                value = (secret.get("data") or {}).get(ref["key"])
                return base64.b64decode(value).decode() if value else None
        return None

    def on_pod_running(self, pod: dict) -> None:
        if (pod["metadata"].get("labels") or {}).get(serving.ROLE_LABEL) != serving.SERVING_ROLE:
            return  # Ray workers and sync Jobs have no HTTP engine to stand in for
        words = _engine_words(pod)
        meta = pod["metadata"]
        host = self._frontend(meta["namespace"], meta["labels"].get("servenest/deployment", ""))
        args = ["--host", host, "--port", _flag(words, "--port", "8000") or "8000",
                "--model", _flag(words, "--served-model-name", "noop") or "noop"]
        key = self._key(pod, "VLLM_API_KEY") or self._key(pod, "SGLANG_API_KEY")
        if key is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=self.root, prefix="api-key-")
            with os.fdopen(fd, "w") as fh:
                fh.write(key)
            args += ["--api-key-file", path]
        server = NoopServerProcess(*args)
        with self._lock:
            self.servers[pod["metadata"]["uid"]] = server

    def on_pod_deleted(self, pod: dict) -> None:
        with self._lock:
            server = self.servers.pop(pod["metadata"]["uid"], None)
        if server is not None:
            server.stop()

    def lb_address(self, svc: dict) -> str:
        selector = svc["spec"].get("selector") or {}
        return self._frontend(svc["metadata"]["namespace"], selector.get("servenest/deployment", ""))

    def close(self) -> None:
        with self._lock:
            servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            server.stop()


@contextmanager
def emulated_ack(root: Path, *, cluster_id: str | None = None, gpu_nodes: int = 2,
                 node_labels: dict | None = None, time_scale: str = REHEARSAL_TIME_SCALE,
                 **controller_kw) -> Iterator[tuple]:
    """(cloud emulator, cluster id, Kubernetes emulator, controller) with the SDK clients pointed
    at them; every engine and server is stopped afterwards."""
    kube = KubeEmulator().start()
    kubelet = NoopKubelet(kube, root / "kubelet")
    for i in range(gpu_nodes):
        kube.add_node(f"gpu-node-{i}", labels=dict(node_labels or H20_NODE_LABELS),
                      allocatable={serving.GPU_RESOURCE: "8", "cpu": "180", "memory": "1800Gi"})
    controller_kw.setdefault("job_result", SyncJobRunner(root / "sync"))
    controller = KubeController(kube, pod_ip=kubelet.pod_ip, lb_address=kubelet.lb_address,
                                on_pod_running=kubelet.on_pod_running, on_pod_deleted=kubelet.on_pod_deleted,
                                on_pod_crashed=kubelet.on_pod_deleted, **controller_kw)
    cloud = CloudEmulator(kubeconfig=kube.kubeconfig()).start()
    cluster = cloud.add_cluster(cluster_id, name="servenest-rehearsal")
    controller.start()
    try:
        with sdk_pointed_at(cloud.endpoint, time_scale):
            yield cloud, cluster["cluster_id"], kube, controller
    finally:
        controller.stop()
        kubelet.close()
        with contextlib.suppress(Exception):
            cloud.stop()
        kube.stop()
