"""The local topology: the real engine as a process group on this machine."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from servenest import paths, process
from servenest.commands import CommandFailedError
from servenest.engines import environment
from servenest.errors import (
    DownloadFailedError,
    EngineEnvironmentError,
    PortInUseError,
    ServeNestError,
    WeightsError,
)
from servenest.fit import hardware_candidates, parallelism
from servenest.locks import file_lock
from servenest.manifest import (
    build_manifest,
    mismatched,
    read_manifest,
    verified_manifest,
    write_manifest,
)
from servenest.spec import DeploymentSpec
from servenest.topology.base import Endpoint, EngineStatus, Estimate, StagedWeights, Topology

TINY_MODEL_SCRIPT = Path(__file__).resolve().parent.parent / "engines" / "tiny_model.py"
TINY_MODEL_SEED = 0


class LocalTopology(Topology):
    name = "local"

    @classmethod
    def spec_for_slot(cls, spec: DeploymentSpec, instance: str) -> DeploymentSpec:
        # Both slots run on this machine: the second listens one port up.
        slotted = super().spec_for_slot(spec, instance)
        if instance == spec.name:
            return slotted
        access = slotted.access.model_copy(update={"port": spec.access.port + 1})
        return slotted.model_copy(update={"access": access})

    # -- where things are -------------------------------------------------------------
    @property
    def host(self) -> str:
        return "0.0.0.0" if self.spec.access.public else "127.0.0.1"

    @property
    def port(self) -> int:
        return self.spec.access.port

    @property
    def engine_python(self) -> str:
        return self.spec.local.engine_python or str(environment.managed_python())

    def _weights_dir(self) -> tuple[Path, Path | None]:
        """(directory the engine reads, manifest path when it is not inside that directory)."""
        w = self.spec.weights
        if w.source == "builtin":
            return paths.models_dir() / paths.safe_component(self.spec.model) / f"seed-{TINY_MODEL_SEED}", None
        if w.source == "local":
            root = Path(w.path).expanduser().resolve()
            # Never write into a user's model directory; its manifest lives in our cache.
            return root, paths.models_dir() / "local-manifests" / f"{paths.safe_component(str(root))}.json"
        revision = w.revision or ("main" if w.source == "huggingface" else "master")
        return (
            paths.models_dir() / w.source / paths.safe_component(self.spec.weights_repo)
            / paths.safe_component(revision),
            None,
        )

    # -- interface ----------------------------------------------------------------------
    def preflight(self) -> dict:
        self._check_port_unless_ours()
        return {"host": self.host, "port": self.port}

    def estimate(self) -> Estimate:
        return Estimate(0.0, "-", "this machine")

    def provision(self) -> dict:
        self._check_port_unless_ours()
        if self.spec.local.engine_python:
            if not Path(self.spec.local.engine_python).exists():
                raise EngineEnvironmentError(
                    f"local.engine_python {self.spec.local.engine_python} does not exist"
                )
            created = False
        else:
            created = self._ensure_managed_environment()
        self.state.resources = {"engine_python": self.engine_python, "host": self.host, "port": self.port}
        self.save()
        return {"engine_python": self.engine_python, "environment_created": created}

    def _ensure_managed_environment(self) -> bool:
        if environment.is_ready():
            return False
        with environment.creation_lock():
            if environment.is_ready():  # another process built it while we waited
                return False
            try:
                self.run(environment.create_commands(), None)
            except (CommandFailedError, RuntimeError) as exc:
                raise EngineEnvironmentError(
                    f"creating the engine environment in {environment.managed_dir()} failed: {exc}"
                ) from None
        return True

    def stage_weights(self, progress: Callable[[float, str], None] | None = None) -> StagedWeights:
        root, manifest_at = self._weights_dir()
        mode = self.spec.weights.verify
        with _directory_lock(root):  # two provisions of one model must not race its files
            manifest = verified_manifest(root, mode, manifest_at)
            reused = manifest is not None
            if manifest is None:
                self._drop_mismatched(root, manifest_at, mode)
                self._fetch(root)
                manifest = build_manifest(root, source=self._source_label())
                if not manifest.files:
                    raise WeightsError(f"no weight files found in {root}")
                write_manifest(root, manifest, manifest_at)
        self.state.weights = {"dir": str(root), "digest": manifest.digest, "bytes": manifest.total_bytes}
        self.save()
        if progress is not None:
            progress(100.0, f"{len(manifest.files)} files verified in {root}")
        return StagedWeights(str(root), len(manifest.files), manifest.total_bytes, manifest.digest, reused)

    def _drop_mismatched(self, root: Path, manifest_at: Path | None, mode) -> None:
        """Delete files that differ from the last manifest, so the hub client fetches them
        again instead of trusting its own metadata (never in a user's own directory)."""
        old = read_manifest(root, manifest_at)
        if old is None or self.spec.weights.source not in ("modelscope", "huggingface"):
            return
        for path in mismatched(root, old, mode):
            path.unlink()

    def _source_label(self) -> str:
        w = self.spec.weights
        if w.source == "builtin":
            return f"builtin:{self.spec.model}@seed-{TINY_MODEL_SEED}"
        if w.source == "local":
            return f"local:{Path(w.path).expanduser().resolve()}"
        return f"{w.source}:{self.spec.weights_repo}@{w.revision or 'default'}"

    def _fetch(self, root: Path) -> None:
        source = self.spec.weights.source
        if source == "local":
            if not root.is_dir():
                raise WeightsError(f"weights.path {root} is not a directory")
            return
        commands = download_commands(self.spec, self.engine_python, root)
        try:
            self.run(commands, None)
        except (CommandFailedError, RuntimeError) as exc:
            raise DownloadFailedError(
                f"staging {self._source_label()} into {root} failed: {exc}"
            ) from None

    def launch(self, api_key: str) -> dict:
        self._stop_engine()
        self._check_port()
        if not self.state.weights:
            raise WeightsError("launch needs staged weights; run stage_weights first")
        argv, env = self.engine_command(self.state.weights["dir"])
        env = {**_inherited_env(), **env, self.engine.key_env: api_key}
        log_dir = paths.logs_dir(self.spec.name)
        log_path = log_dir / f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        proc = process.start_group(argv, env, log_path, cwd=log_dir)
        self.state.engine = {
            "pid": proc.pid, "pgid": proc.pid, "start_ticks": process.start_ticks(proc.pid),
            "log": str(log_path), "argv": argv,
            "host": self.host, "port": self.port, "started_at": time.time(),
        }
        self.save()
        return {"pid": proc.pid, "log": str(log_path), "command": shlex.join(argv)}

    def engine_command(self, model_dir: str) -> tuple[list[str], dict[str, str]]:
        """The engine's argv and its environment (less the inherited part and the key)."""
        hw = hardware_candidates(self.spec)[0]
        tp, pp = parallelism(self.spec, hw)
        args = self.engine.server_args(self.spec, model_dir, self.host, self.port, tp, pp, hw.accelerator)
        env = {**self.spec.engine.env, process.MARK_ENV: self.spec.name}
        if hw.accelerator == "CPU":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.spec.local.cpu_kvcache_gib)
            if (os.cpu_count() or 1) >= 2:
                # vLLM's CPU threads spin on every core they are given; keep one for the
                # orchestrator and the load client, or a benchmark measures its own starvation.
                env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
        return [self.engine_python, "-m", self.engine.module, *args], env

    def plan(self) -> dict:
        """What provision would run, touching nothing."""
        root, _ = self._weights_dir()
        argv, env = self.engine_command(str(root))
        env[self.engine.key_env] = f"<from Secret block {self.spec.access.api_key_secret}>"
        out = {}
        if not self.spec.local.engine_python:
            out["engine_environment"] = "\n".join(environment.create_commands())
        if self.spec.weights.source != "local":
            out["stage_weights"] = "\n".join(download_commands(self.spec, self.engine_python, root))
        out["launch"] = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) + " " + shlex.join(argv)
        out["endpoint"] = self.endpoint().base_url + "/v1"
        return out

    def restart_engine(self, api_key: str) -> dict:
        # A process has no runtime of its own to restart it: stop the group, start it again
        # with the recorded spec (same arguments, same staged weights).
        if not self.state.engine and not self.state.resources:
            raise ServeNestError(f"{self.spec.name} was never launched here; nothing to restart")
        return self.launch(api_key)

    def endpoint(self) -> Endpoint:
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return Endpoint(f"http://{host}:{self.port}", self.spec.served_model_name, self.spec.access.public)

    def logs(self, lines: int = 40) -> list[str]:
        log = self.state.engine.get("log")
        return process.tail(Path(log), lines) if log else []

    def status(self) -> EngineStatus:
        pid = self.state.engine.get("pid")
        if pid is None:
            return EngineStatus(False, detail="not launched")
        # Members first: a process that exits in between then shows as exited, with its code.
        members = process.group_members(
            self.state.engine["pgid"], self.spec.name, self.state.engine.get("start_ticks")
        )
        st = process.state(pid)
        if not st.alive:
            return EngineStatus(False, st.exit_code, f"pid {pid} exited")
        if not members:
            return EngineStatus(False, detail=f"pid {pid} is not this deployment's engine")
        return EngineStatus(True, None, f"pid {pid}")

    def teardown(self) -> dict:
        stopped = self._stop_engine()
        self.state.resources = {}
        self.save()
        return {**stopped, "weights_kept": self.state.weights.get("dir")}

    @classmethod
    def teardown_recorded(cls, state) -> dict:
        eng = state.engine
        if not eng:
            return {"stopped": False}
        grace = (state.spec.get("local") or {}).get("stop_grace_s", 15.0)
        result = process.stop_group(eng["pgid"], state.name, grace, eng.get("start_ticks"))
        process.wait_port_free(eng.get("host", "127.0.0.1"), eng.get("port", 0), timeout_s=10)
        return {"stopped": True, **result}

    # -- helpers --------------------------------------------------------------------------
    def _stop_engine(self) -> dict:
        eng = self.state.engine
        if not eng:
            return {"stopped": False}
        result = process.stop_group(
            eng["pgid"], self.spec.name, self.spec.local.stop_grace_s, eng.get("start_ticks")
        )
        process.wait_port_free(eng.get("host", self.host), eng.get("port", self.port), timeout_s=10)
        self.state.engine = {}
        self.save()
        return {"stopped": True, **result}

    def _check_port_unless_ours(self) -> None:
        # A redeploy finds this slot's own engine on the port (launch replaces it).
        if not self.status().running:
            self._check_port()

    def _check_port(self) -> None:
        if not process.port_is_free(self.host, self.port):
            owner = process.port_owner(self.port)
            raise PortInUseError(
                f"port {self.port} on {self.host} is already in use"
                + (f" by {owner}" if owner else "")
                + "; stop that process or set access.port to a free port"
            )


def _directory_lock(root: Path):
    # In ServeNest's own cache: a user's model directory (or its parent) is never written.
    return file_lock(paths.models_dir() / ".locks" / f"{paths.safe_component(str(root))}.lock")


def _inherited_env() -> dict[str, str]:
    # The engine gets a clean environment: no proxy settings (it only talks to local
    # clients) and none of this process's secrets, only what it needs to run.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "HF_HOME", "HF_HUB_OFFLINE",
            "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", os.defpath)
    # Nothing to download at serve time: the weights are staged and verified.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def download_commands(spec, engine_python: str, root: Path) -> list[str]:
    """The official client's resumable download into ``root`` (or the tiny-model build)."""
    w = spec.weights
    py = shlex.quote(engine_python)
    dest = shlex.quote(str(root))
    if w.source == "builtin":
        return [
            # Only called when no verified copy is there: replace whatever is.
            f"{py} {shlex.quote(str(TINY_MODEL_SCRIPT))} {dest} --seed {TINY_MODEL_SEED} --force",
        ]
    bindir = shlex.quote(str(Path(engine_python).parent))
    repo = shlex.quote(spec.weights_repo)
    if w.source == "modelscope":
        rev = f" --revision {shlex.quote(w.revision)}" if w.revision else ""
        return [f"mkdir -p {dest}", f"{bindir}/modelscope download --model {repo}{rev} --local_dir {dest}"]
    if w.source == "huggingface":
        rev = f" --revision {shlex.quote(w.revision)}" if w.revision else ""
        return [f"mkdir -p {dest}", f"{bindir}/hf download {repo}{rev} --local-dir {dest}"]
    raise WeightsError(f"weights.source {w.source} cannot be staged by the local topology")

