"""Shell scripts Cloud Assistant runs on the ECS hosts: stage weights, launch, tear down.

Pure, deterministic rendering; every interpolated value goes through ``shlex.quote``.

Host contracts:

- Weights live in ``/root/llm-model/<model id>`` (as in the seed deployments).
- Staging manifest: ``<dir>/.servenest-sha256`` in ``sha256sum`` format (``<hex>  <path>``,
  paths relative to the weights directory, sorted with ``LC_ALL=C``) plus
  ``<dir>/.servenest-sizes`` (``<path><TAB><bytes>`` lines, same order). Both cover every
  regular file except the two manifests and hub bookkeeping (``._____temp``, ``.mdl``,
  ``.msc``, ``.mv``, ``.cache``, ``.git``) and ``.servenest-*`` files. A run whose files and sizes match
  ``.servenest-sizes`` (``weights.verify: quick``) or whose ``sha256sum --check`` also
  passes (``full``) skips the download. Otherwise the manifests are removed, ``modelscope
  download`` resumes into the directory (3 attempts), and the manifests are rewritten
  (sizes first, the sha256 file last, each via a temporary file and ``mv``, so a
  ``.servenest-sha256`` only exists for a finished staging). The launch script refuses to start without ``.servenest-sha256``.
- API key: a separate Cloud Assistant command writes it to ``/root/.servenest/api-key``
  (mode 0600, owner root) on the node that serves HTTP (single, or master on ecs-dual).
  The launch script bind-mounts that file read-only into the container, and the
  container's entrypoint reads it: vLLM gets ``VLLM_API_KEY`` in its own environment;
  SGLang only accepts ``--api-key``, so the entrypoint passes it from a shell variable
  (visible in that process's argv to root on the host, a limit of SGLang). Neither
  ``docker inspect`` (Config.Env / Args show only the entrypoint path) nor any rendered
  script contains the key, and no script echoes it.
- The engine container is always named ``vllm`` (both engines, as in the seeds' vLLM
  scripts), so relaunch and teardown remove the same name.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

from servenest.engines import adapter_for
from servenest.fit import hardware_candidates, parallelism
from servenest.spec import DeploymentSpec

MODEL_ROOT = "/root/llm-model"
STATE_DIR = "/root/.servenest"
KEY_FILE = f"{STATE_DIR}/api-key"
ENTRYPOINT_FILE = f"{STATE_DIR}/entrypoint.sh"
CONTAINER_KEY_FILE = "/run/servenest/api-key"
CONTAINER_ENTRYPOINT = "/run/servenest/entrypoint.sh"
CONTAINER_NAME = "vllm"
# Docker restarts a container that exits (a crash, an OOM kill) and starts it again after a
# host reboot; only `docker stop`/`rm` keep it down (docs.docker.com/engine/containers/
# start-containers-automatically/). The watch sees the restarts in RestartCount.
RESTART_POLICY = "unless-stopped"
MANIFEST = ".servenest-sha256"
SIZES = ".servenest-sizes"
RAY_PORT = 6379
SGLANG_DIST_PORT = 20000
RAY_WAIT_S = 1800
# The seeds' ComputeNest images (the sglang one also carries vLLM, as seed 001 uses it).
DEFAULT_IMAGES = {
    "vllm": "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.7.2-pytorch2.5.1-cuda12.4-ubuntu22.04",
    "sglang": "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.7.2-sglang0.4.3.post2-pytorch2.5-cuda12.4-20250224",
}
# Seed 001's environment for NCCL over elastic RDMA between the two nodes.
DUAL_NCCL_ENV = {
    "NCCL_IB_DISABLE": "0",
    "NCCL_DEBUG": "INFO",
    "NCCL_NET_GDR_LEVEL": "5",
    "NCCL_P2P_LEVEL": "5",
    "NCCL_IB_GID_INDEX": "1",
}
SOCKET_ENV = {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
_HUB_BOOKKEEPING = ("._____temp", ".mdl", ".msc", ".mv", ".cache", ".git")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEREDOC_END = "SERVENEST_ENTRYPOINT_EOF"
HEADER = "#!/usr/bin/env bash\nset -euo pipefail\n"
# The summary line every staging script prints (``summary`` in manifest_functions).
WEIGHTS_LINE = re.compile(r"servenest-weights: files=(\d+) bytes=(\d+) digest=([0-9a-f]{64})")

q = shlex.quote


def model_dir(spec: DeploymentSpec) -> str:
    return f"{MODEL_ROOT}/{spec.model}"


def _roles(spec: DeploymentSpec) -> tuple[str, ...]:
    if spec.topology == "ecs-single":
        return ("single",)
    if spec.topology == "ecs-dual":
        return ("master", "worker")
    raise ValueError(f"cloud scripts cover ecs-single and ecs-dual, not {spec.topology}")


def _check_role(spec: DeploymentSpec, role: str) -> None:
    if role not in _roles(spec):
        raise ValueError(f"role {role!r} is not one of {_roles(spec)} for {spec.topology}")


def _parallelism(spec: DeploymentSpec) -> tuple[int, int]:
    # Every candidate instance type of a spec is checked alike by the fit check; the
    # launch uses the first (capacity failover re-renders for the type actually placed).
    return parallelism(spec, hardware_candidates(spec)[0])


# -- staging -----------------------------------------------------------------------------
def modelscope_download(spec: DeploymentSpec) -> str:
    """Shell lines that download (resumably, 3 attempts) into ``$DIR`` with the ModelScope CLI."""
    download = ["modelscope", "download", "--model", spec.weights_repo]
    if spec.weights.revision:
        download += ["--revision", spec.weights.revision]
    download += ["--local_dir", '"$DIR"']
    command = " ".join(a if a == '"$DIR"' else q(a) for a in download)
    return f"""if ! command -v modelscope >/dev/null 2>&1; then
  python3 -m pip install --quiet modelscope
fi
attempt=1
until {command}; do
  if (( attempt >= 3 )); then
    echo "servenest: modelscope download failed $attempt times" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep $((attempt * 10))
done
"""


def manifest_functions(spec: DeploymentSpec) -> str:
    """Shell variables and functions that list, verify and summarise a weights directory
    (the current one) against ServeNest's manifests; shared by every staging script."""
    prune = " -o ".join(f"-name {q(n)}" for n in _HUB_BOOKKEEPING)
    full = "1" if spec.weights.verify == "full" else "0"
    return f"""MANIFEST={q(MANIFEST)}
SIZES={q(SIZES)}
FULL_VERIFY={full}

list_files() {{
  find . -mindepth 1 \\( {prune} \\) -prune -o -type f \\
    ! -name '.servenest-*' -printf '%P\\0' | LC_ALL=C sort -z
}}

current_sizes() {{
  list_files | xargs -0 -r stat --printf '%n\\t%s\\n' --
}}

verified() {{
  [[ -s "$MANIFEST" && -s "$SIZES" ]] || return 1
  diff -q <(current_sizes) "$SIZES" >/dev/null || return 1
  if [[ "$FULL_VERIFY" == 1 ]]; then
    sha256sum --check --quiet --strict "$MANIFEST" >/dev/null || return 1
  fi
}}

# One line the pipeline parses: what is on disk, and the manifest's own digest.
summary() {{
  echo "servenest-weights: files=$(wc -l < "$SIZES") bytes=$(awk -F'\t' '{{s += $2}} END {{print s + 0}}' "$SIZES") digest=$(sha256sum "$MANIFEST" | cut -d' ' -f1)"
}}
"""


def staging_script(spec: DeploymentSpec, host_role: str) -> str:
    """Download the weights with the ModelScope CLI (resumable) and write/verify the manifest."""
    _check_role(spec, host_role)
    if spec.weights.source != "modelscope":
        raise ValueError(f"cloud staging supports weights.source modelscope, not {spec.weights.source}")
    download = modelscope_download(spec)
    return HEADER + f"""# ServeNest staging: {q(spec.name)} on {q(host_role)}
DIR={q(model_dir(spec))}
{manifest_functions(spec)}
mkdir -p "$DIR"
cd "$DIR"
if verified; then
  echo "servenest: weights in $DIR match their manifest; skipping download"
  summary
  exit 0
fi
rm -f "$MANIFEST" "$SIZES"
{download}list_files | xargs -0 -r sha256sum -- > "$MANIFEST.tmp"
current_sizes > "$SIZES.tmp"
mv "$SIZES.tmp" "$SIZES"
mv "$MANIFEST.tmp" "$MANIFEST"
echo "servenest: staged $(wc -l < "$SIZES") files in $DIR"
summary
"""


# -- launch ------------------------------------------------------------------------------
def _serves_http(role: str) -> bool:
    return role in ("single", "master")


def _engine_command(spec: DeploymentSpec, role: str, head_address: str | None) -> list[str]:
    """The engine's argv (quoted words) for a role; '$SGLANG_API_KEY' stays an expansion."""
    adapter = adapter_for(spec)
    tp, pp = _parallelism(spec)
    path = model_dir(spec)
    port = spec.access.port
    if spec.engine.kind == "vllm":
        args = adapter.server_args(spec, path, "0.0.0.0", port, tp, pp, "GPU")
        if spec.topology == "ecs-dual":
            args += ["--distributed-executor-backend", "ray"]
        words = ["python3", "-m", adapter.module, *args]
        if "--trust-remote-code" not in words:
            words.append("--trust-remote-code")
        return [q(w) for w in words]
    # SGLang (0.4.x) has no pipeline parallelism: all devices go to --tp, as in seed 001.
    args = adapter.server_args(spec, path, "0.0.0.0", port, tp * pp, 1, "GPU")
    if spec.topology == "ecs-dual":
        args += [
            "--nnodes", "2", "--node-rank", "0" if role == "master" else "1",
            "--dist-init-addr", f"{head_address}:{SGLANG_DIST_PORT}",
        ]
    words = ["python3", "-m", adapter.module, *args]
    if "--trust-remote-code" not in words:
        words.append("--trust-remote-code")
    out = [q(w) for w in words]
    if _serves_http(role):
        out += ["--api-key", '"$SGLANG_API_KEY"']
    return out


def _wrap(words: list[str]) -> str:
    """One flag (with its value) per continued line."""
    out = words[0]
    for word in words[1:]:
        out += " \\\n  " + word if word.startswith("--") else " " + word
    return out


# What `servenest plan` shows for the head's address: it is known only once the stack exists.
HEAD_PLACEHOLDER = "MASTER_PRIVATE_IP"


def _check_head(spec: DeploymentSpec, role: str, head_address: str | None) -> None:
    needs = spec.topology == "ecs-dual" and (role == "worker" or spec.engine.kind == "sglang")
    if needs and not head_address:
        raise ValueError(f"{spec.engine.kind} {role} on ecs-dual needs head_address (master private IP)")
    if head_address and head_address != HEAD_PLACEHOLDER:
        ipaddress.ip_address(head_address)  # ValueError on anything but an IP


def container_script(spec: DeploymentSpec, role: str, head_address: str | None = None) -> str:
    """What runs inside the engine container (its entrypoint); the key is read from a file."""
    _check_role(spec, role)
    _check_head(spec, role, head_address)
    env = dict(SOCKET_ENV)
    if spec.topology == "ecs-dual":
        env.update(DUAL_NCCL_ENV)
    env.update(spec.engine.env)
    bad = sorted(k for k in env if not _ENV_NAME.match(k))
    if bad:
        raise ValueError(f"engine.env names must be shell identifiers: {', '.join(bad)}")
    lines = [HEADER.rstrip("\n"), f"# ServeNest engine entrypoint: {q(spec.name)} {spec.engine.kind} {role}"]
    lines += [f"export {k}={q(v)}" for k, v in env.items()]
    if spec.engine.version:
        lines.append(f"python3 -m pip install --quiet --upgrade {q(f'{spec.engine.kind}=={spec.engine.version}')}")
    if _serves_http(role):
        var = "VLLM_API_KEY" if spec.engine.kind == "vllm" else "SGLANG_API_KEY"
        lines.append(f"{var}=\"$(cat {q(CONTAINER_KEY_FILE)})\"")
        if spec.engine.kind == "vllm":
            lines.append("export VLLM_API_KEY")
    dual_vllm = spec.topology == "ecs-dual" and spec.engine.kind == "vllm"
    if dual_vllm and role == "worker":
        lines.append(f"exec ray start --address={q(f'{head_address}:{RAY_PORT}')} --block")
        return "\n".join(lines) + "\n"
    if dual_vllm:
        tp, pp = _parallelism(spec)
        # The dashboard (with its unauthenticated job API) stays on loopback.
        lines += [
            f"ray start --head --dashboard-host 127.0.0.1 --port={RAY_PORT}",
            f"want={tp * pp}",
            "have=0",
            f"deadline=$((SECONDS + {RAY_WAIT_S}))",
            "while (( SECONDS < deadline )); do",
            "  have=\"$(python3 -c 'import ray; ray.init(address=\"auto\", logging_level=\"ERROR\"); "
            "print(int(ray.cluster_resources().get(\"GPU\", 0)))' 2>/dev/null || echo 0)\"",
            "  if (( have >= want )); then break; fi",
            "  sleep 5",
            "done",
            "if (( have < want )); then",
            "  echo \"servenest: Ray cluster has $have of $want GPUs after the wait\" >&2",
            "  exit 1",
            "fi",
        ]
    lines.append("exec " + _wrap(_engine_command(spec, role, head_address)))
    return "\n".join(lines) + "\n"


def launch_script(spec: DeploymentSpec, role: str, head_address: str | None = None) -> str:
    """Replace the engine container on this host (role: single, or master/worker on ecs-dual)."""
    entry = container_script(spec, role, head_address)
    if any(line.strip() == _HEREDOC_END for line in entry.splitlines()):
        raise ValueError("entrypoint would end its here-document early")
    image = spec.engine.image or DEFAULT_IMAGES[spec.engine.kind]
    mdir = model_dir(spec)
    docker = [
        "docker run -d -t", f"--name {CONTAINER_NAME}", f"--restart {RESTART_POLICY}", "--net=host", "--gpus all", "--ipc=host",
    ]
    if spec.topology == "ecs-dual":  # elastic RDMA devices and pinned memory, as in seed 001
        docker += ["--privileged", "--cap-add=SYS_PTRACE", "--ulimit memlock=-1", "--ulimit stack=67108864"]
    docker += [
        f"-v {q(f'{MODEL_ROOT}:{MODEL_ROOT}:ro')}",
        f"-v {q(f'{ENTRYPOINT_FILE}:{CONTAINER_ENTRYPOINT}:ro')}",
    ]
    if _serves_http(role):
        docker.append(f"-v {q(f'{KEY_FILE}:{CONTAINER_KEY_FILE}:ro')}")
    docker += ["--entrypoint /bin/bash", q(image), q(CONTAINER_ENTRYPOINT)]
    key_check = ""
    if _serves_http(role):
        key_check = (
            f"if [[ ! -s {q(KEY_FILE)} ]]; then\n"
            f"  echo \"servenest: API key file {KEY_FILE} is missing or empty\" >&2\n"
            "  exit 1\n"
            "fi\n"
        )
    docker_cmd = " \\\n  ".join(docker)
    return HEADER + f"""# ServeNest launch: {q(spec.name)} {spec.engine.kind} {role}
for tool in docker nvidia-smi; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "servenest: $tool is not installed on this image" >&2
    exit 1
  fi
done
MODEL_DIR={q(mdir)}
if [[ ! -s "$MODEL_DIR/{MANIFEST}" ]]; then
  echo "servenest: weights in $MODEL_DIR are not staged (no manifest)" >&2
  exit 1
fi
{key_check}docker rm -f {CONTAINER_NAME} || true
install -d -m 0700 {q(STATE_DIR)}
umask 077
cat > {q(ENTRYPOINT_FILE)} <<'{_HEREDOC_END}'
{entry}{_HEREDOC_END}
{docker_cmd}
echo "servenest: started container {CONTAINER_NAME} ({role})"
"""


def teardown_script() -> str:
    """Remove the engine container, its entrypoint and the key file; keep the weights."""
    return HEADER + f"""# ServeNest teardown
docker rm -f {CONTAINER_NAME} || true
rm -f {q(KEY_FILE)} {q(ENTRYPOINT_FILE)}
echo "servenest: removed container {CONTAINER_NAME}"
"""


# -- small host commands -----------------------------------------------------------------
def key_script(api_key: str) -> str:
    """Write the API key to a root-only file on the serving host. Sent with KeepCommand
    false and never logged; the key is quoted, not interpolated."""
    if not api_key or "\n" in api_key:
        raise ValueError("the API key must be one non-empty line")
    return HEADER + f"""install -d -m 0700 {q(STATE_DIR)}
umask 077
# shellcheck disable=SC2016  # the key is a literal: nothing in it may expand
printf '%s' {q(api_key)} > {q(KEY_FILE + ".tmp")}
mv {q(KEY_FILE + ".tmp")} {q(KEY_FILE)}
echo "servenest: API key written"
"""


def status_script() -> str:
    """One line: ``<status> <exit code> <restarts>``, or ``absent``."""
    return HEADER + f"""docker inspect -f '{{{{.State.Status}}}} {{{{.State.ExitCode}}}} {{{{.RestartCount}}}}' {CONTAINER_NAME} 2>/dev/null || echo absent
"""


def restart_script() -> str:
    """Restart the engine container as it was created (same arguments, same mounted key)."""
    return HEADER + f"""docker restart -t 30 {CONTAINER_NAME}
echo "servenest: restarted container {CONTAINER_NAME}"
"""


def logs_script(lines: int) -> str:
    return HEADER + f"""docker logs --tail {int(lines)} {CONTAINER_NAME} 2>&1 || echo "servenest: no container {CONTAINER_NAME}"
"""


def ray_status_script() -> str:
    return HEADER + f"""docker exec {CONTAINER_NAME} ray status 2>&1 || echo "servenest: ray status unavailable"
"""
