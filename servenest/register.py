"""`servenest register`: make a Prefect server ready to run ServeNest from its UI and CLI.

Against the configured Prefect API, each step safe to repeat (run it again after changing a
spec, a flow or an automation):

1. the block types (``AlibabaCloudCredentials``, ``ServeNestEndpoint``), as
   ``prefect block register -m blocks`` does;
2. a random API key in the Secret block of every ``local`` spec whose block is missing
   (a key someone set is never replaced; cloud specs' keys are the user's to create);
3. the process work pool ``servenest-local``, unless it exists;
4. every deployment of ``prefect.yaml`` with its schedules and triggers
   (``prefect --no-prompt deploy --all``, run in the repository: without a ``pull``
   section, workers run the flows from there);
5. the schedules of cloud deployments paused while the ``AlibabaCloudCredentials`` block
   their runs need is missing, so nothing fails every night on a machine without an
   account (step 4 sets them as prefect.yaml says: register again once the block exists);
6. the automations of ``deployments/automations/``, created or updated by name;
7. optionally a process worker for the pool, started once per machine (its pid is kept in
   ``SERVENEST_HOME``), so ``prefect deployment run`` and the UI's Run button work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import yaml
from pydantic import SecretStr

from servenest import paths, process
from servenest.errors import ServeNestError
from servenest.prefect_api import SERVER_PID_FILE
from servenest.prefect_yaml import WORK_POOL, spec_files
from servenest.spec import DeploymentSpec, load_spec_file

REPO_ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS_BLOCK_TYPE = "alibaba-cloud-credentials"
WORKER_PID_FILE = "prefect-worker.pid"


# -- plain decisions (no server) ------------------------------------------------------
def credentials_needed(parameters: dict, parameter_schema: dict | None = None) -> str | None:
    """The AlibabaCloudCredentials block a deployment's runs need, or None (a local spec).

    A deployment carries either a whole spec (``provision``, ``redeploy``), whose cloud
    section names the block, or a ``credentials_block`` parameter (``sweep``), whose
    default is in the flow's parameter schema when prefect.yaml leaves it out.
    """
    spec = parameters.get("spec")
    if isinstance(spec, dict):
        parsed = DeploymentSpec.model_validate(spec)
        return None if parsed.topology == "local" else parsed.cloud.credentials_block
    if "credentials_block" in parameters:
        return str(parameters["credentials_block"])
    prop = ((parameter_schema or {}).get("properties") or {}).get("credentials_block") or {}
    return prop.get("default")


def credentials_of(deployments: list[tuple[str, dict, dict | None]]) -> list[str | None]:
    """``credentials_needed`` of each (name, parameters, parameter schema); a deployment that
    carries only the spec's name (``watch/<name>``, ``launch/<name>``, ...) needs what the
    spec of that name needs (``provision/<name>`` and ``redeploy/<name>`` carry it)."""
    by_name = {name: credentials_needed(params) for name, params, _ in deployments
               if isinstance(params.get("spec"), dict)}
    return [credentials_needed(params, schema) or by_name.get(name) for name, params, schema in deployments]


@dataclass(frozen=True)
class Schedule:
    deployment: str  # "<flow>/<deployment>"
    deployment_id: UUID
    schedule_id: UUID
    active: bool
    credentials_block: str | None


def schedules_to_pause(schedules: list[Schedule], credential_blocks: set[str]) -> list[Schedule]:
    """Active schedules whose runs need a credentials block that does not exist."""
    return [s for s in schedules
            if s.active and s.credentials_block is not None and s.credentials_block not in credential_blocks]


def local_key_secrets(deployments_dir: Path) -> list[str]:
    """Secret block names of the local specs' API keys (a key for a local engine may be
    made up here; a cloud deployment's key is a real credential its owner sets)."""
    names = []
    for path in spec_files(deployments_dir):
        spec = load_spec_file(path)
        if spec.topology == "local" and spec.access.api_key_secret not in names:
            names.append(spec.access.api_key_secret)
    return names


def load_automations(directory: Path) -> list:
    """The automation files of ``directory``, validated as Prefect's CLI validates them."""
    from prefect.events.schemas.automations import AutomationCore

    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            out.append(AutomationCore.model_validate(yaml.safe_load(path.read_text())))
        except ValueError as exc:
            raise ServeNestError(f"{path}: not a valid Prefect automation: {exc}") from None
    return out


def client_env(api_url: str) -> dict[str, str]:
    """The environment of the Prefect CLI and worker processes: this process's, pointed at
    ``api_url`` (with the API auth string when one is configured)."""
    from prefect.settings import PREFECT_API_AUTH_STRING

    env = {**os.environ, "PREFECT_API_URL": api_url}
    auth = PREFECT_API_AUTH_STRING.value()  # passed on, never printed
    if auth:  # Setting.value() unwraps the SecretStr of the settings model
        env["PREFECT_API_AUTH_STRING"] = auth.get_secret_value() if isinstance(auth, SecretStr) else auth
    return env


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line has ``marker``
    (a recycled pid belongs to something else)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


# -- steps against the server ---------------------------------------------------------
def register_blocks() -> list[str]:
    from blocks import AlibabaCloudCredentials, ServeNestEndpoint

    for block in (AlibabaCloudCredentials, ServeNestEndpoint):
        block.register_type_and_schema()
    return [AlibabaCloudCredentials.get_block_type_slug(), ServeNestEndpoint.get_block_type_slug()]


def ensure_key(secret_name: str) -> bool:
    """Create a random API key in a Secret block if it is missing; True if created."""
    from prefect.blocks.system import Secret

    from tasks.secrets import secret_exists

    if secret_exists(secret_name):  # never replace a key someone set, whatever it holds
        return False
    Secret(value=f"sk-{secrets.token_urlsafe(24)}").save(secret_name)
    return True


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the process work pool (Prefect's default job template) unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        client.create_work_pool(WorkPoolCreate(
            name=name, type=ProcessWorker.type,
            base_job_template=ProcessWorker.get_default_base_job_template()))
    return True


def deploy_all(env: dict[str, str], cwd: Path = REPO_ROOT, timeout_s: float = 900.0) -> None:
    prefect = str(Path(sys.executable).parent / "prefect")
    try:
        done = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ServeNestError(f"`prefect deploy --all` did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise ServeNestError(f"`prefect --no-prompt deploy --all` failed ({done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-3000:]}")


def servenest_deployments() -> tuple[int, list[Schedule]]:
    """How many deployments the work pool has, and each of their schedules with the
    credentials its runs need."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    schedules = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[WORK_POOL]))
        deployments: list = []
        while page := client.read_deployments(work_pool_filter=pool, limit=200, offset=len(deployments)):
            deployments += page  # the server returns at most 200 at a time
        needs = credentials_of(
            [(d.name, d.parameters or {}, d.parameter_openapi_schema) for d in deployments])
        for d, needed in zip(deployments, needs, strict=True):
            schedules += [Schedule(f"{flows.get(d.flow_id, '?')}/{d.name}", d.id, s.id, s.active, needed)
                          for s in d.schedules]
    return len(deployments), schedules


def credential_block_names() -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            docs = client.read_block_documents_by_type(CREDENTIALS_BLOCK_TYPE)
        except ObjectNotFound:
            return set()
    return {d.name for d in docs if d.name}


def pause_schedules(schedules: list[Schedule]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for s in schedules:
            client.update_deployment_schedule(s.deployment_id, s.schedule_id, active=False)


def apply_automations(automations: list) -> list[str]:
    """Create each automation, or update the one of that name (duplicates are removed)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:
                    client.delete_automation(extra.id)
            else:
                client.create_automation(automation)
    return [a.name for a in automations]


@dataclass
class WorkerProcess:
    pid: int
    log: Path
    started: bool  # False: one started earlier was still running


def ensure_worker(env: dict[str, str], pool: str = WORK_POOL, cwd: Path = REPO_ROOT) -> WorkerProcess:
    """A ``prefect worker start --pool`` in its own session (so it outlives this command),
    unless the one started earlier on this machine is still running."""
    pid_file, log = paths.home() / WORKER_PID_FILE, paths.home() / "prefect-worker.log"
    pid = running_pid(pid_file, "worker")
    if pid:
        return WorkerProcess(pid, log, started=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(log, "ab") as out:
        proc = subprocess.Popen([prefect, "worker", "start", "--pool", pool], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=process.live_sigint)
    pid_file.write_text(f"{proc.pid}\n")
    return WorkerProcess(proc.pid, log, started=True)


@dataclass
class Registration:
    api_url: str
    blocks: list[str] = field(default_factory=list)
    keys_created: list[str] = field(default_factory=list)
    pool_created: bool = False
    deployments: int = 0
    schedules: list[Schedule] = field(default_factory=list)
    paused: list[Schedule] = field(default_factory=list)
    automations: list[str] = field(default_factory=list)
    worker: WorkerProcess | None = None

    def lines(self) -> list[str]:
        active = sum(s.active for s in self.schedules) - len(self.paused)
        off = len(self.schedules) - active - len(self.paused)
        out = [f"registered on {self.api_url}:",
               f"  block types: {', '.join(self.blocks)}",
               f"  work pool {WORK_POOL}: {'created' if self.pool_created else 'exists'}",
               f"  deployments: {self.deployments} (every one in prefect.yaml); schedules: {active} on, "
               f"{len(self.paused)} paused for want of credentials, {off} off as prefect.yaml says",
               f"  automations: {', '.join(self.automations) or '-'}"]
        out += [f"  created a random API key in Secret block {name!r}" for name in self.keys_created]
        missing = sorted({s.credentials_block for s in self.paused if s.credentials_block})
        if missing:
            out.append(f"  cloud schedules stay paused until an AlibabaCloudCredentials block exists "
                       f"({', '.join(missing)}); create it, then run `servenest register` again")
        if self.worker:
            state = "started" if self.worker.started else "already running"
            out.append(f"  worker for {WORK_POOL}: {state}, pid {self.worker.pid}, log {self.worker.log}")
        return out


def register(api_url: str, *, worker: bool = False, repo: Path = REPO_ROOT) -> Registration:
    """Every step of the module docstring against ``api_url`` (the current Prefect settings
    must point there too: the in-process client steps use them)."""
    automations = load_automations(repo / "deployments" / "automations")  # bad files fail first
    result = Registration(api_url=api_url)
    env = client_env(api_url)
    result.blocks = register_blocks()
    result.keys_created = [n for n in local_key_secrets(repo / "deployments") if ensure_key(n)]
    result.pool_created = ensure_work_pool()
    deploy_all(env, cwd=repo)
    result.deployments, result.schedules = servenest_deployments()
    result.paused = schedules_to_pause(result.schedules, credential_block_names())
    pause_schedules(result.paused)
    result.automations = apply_automations(automations)
    if worker:
        result.worker = ensure_worker(env, cwd=repo)
    return result


def stop_started_processes() -> list[str]:
    """Stop the worker and the local Prefect server that ServeNest started on this machine
    (their process groups: a worker's flow runs and the server's own workers go too)."""
    import signal

    stopped = []
    for pid_file, marker, what in ((WORKER_PID_FILE, "worker", "worker"),
                                   (SERVER_PID_FILE, "server", "Prefect server")):
        path = paths.home() / pid_file
        pid = running_pid(path, marker)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            stopped.append(f"{what} (pid {pid})")
        path.unlink(missing_ok=True)
    return stopped
