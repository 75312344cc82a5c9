"""Readiness check of GPU hosts before anything is staged or launched on them.

One fact-gathering script runs on every host (Cloud Assistant, after the bootstrap); the
judging is plain Python against the catalog, so each problem names the host and what is
wrong ("i-xxx: nvidia-smi shows 7 of 8 GPUs"):

- ``nvidia-smi`` sees the catalog's GPU count, each with about the catalog's memory
  (nvidia-smi reports what is usable, a little under the nominal size: at least
  ``MEMORY_TOLERANCE`` of the catalog figure);
- ``nvidia-fabricmanager`` is active on NVSwitch machines;
- ``docker run --gpus all`` of the engine image sees every GPU (this also pulls the image,
  which the launch needs anyway);
- free space on the weights' disk covers the weights not yet there plus headroom for the
  engine image and the hub's temporary files;
- on ecs-dual, each node reaches the other on the Ray and NCCL/SGLang ports (the check
  opens short-lived listeners on the master's private IP and connects from the worker).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from servenest.catalog import get_instance_type
from servenest.cloud.scripts import MODEL_ROOT
from servenest.errors import HostCommandError
from servenest.spec import DeploymentSpec

MEMORY_TOLERANCE = 0.9
# The seeds' egs engine images unpack to ~25-30 GB; the hub's temporary copy of the largest
# shard and logs take a few percent of the weights.
IMAGE_HEADROOM_BYTES = 30 * 10**9
WEIGHTS_HEADROOM = 0.05
FACT_LINE = re.compile(r"^servenest-ready: (\w+)=(.*)$", re.M)
# Ray's GCS port, SGLang's --dist-init-addr port and NCCL's default bootstrap port
# (NCCL then uses ephemeral ports, which the node-to-node security rule opens in full).
PEER_PORTS = (6379, 20000, 29500)
LISTEN_S = 120
HEADER = "#!/usr/bin/env bash\nset -uo pipefail\n"

q = shlex.quote


def facts_script(spec: DeploymentSpec, image: str, model_dir: str) -> str:
    """Print ``servenest-ready: key=value`` lines; never fails (the judging is in Python)."""
    return HEADER + f"""# ServeNest readiness facts: {q(spec.name)}
fact() {{ echo "servenest-ready: $1=$2"; }}
fact gpus "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')"
fact memory_mib "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | tr -d ' ' | paste -sd, -)"
fact fabric "$(systemctl is-active nvidia-fabricmanager 2>/dev/null | head -n 1)"
mkdir -p {q(model_dir)}
fact disk_free "$(df -B1 --output=avail {q(model_dir)} 2>/dev/null | tail -n 1 | tr -d ' ')"
fact weights_present "$(du -sb {q(model_dir)} 2>/dev/null | cut -f1)"
if mountpoint -q {q(MODEL_ROOT)}; then
  fact weights_disk yes
  fact system_free "$(df -B1 --output=avail / 2>/dev/null | tail -n 1 | tr -d ' ')"
fi
if OUT="$(docker run --rm --gpus all --entrypoint nvidia-smi {q(image)} -L 2>&1)"; then
  fact docker_gpus "$(grep -c '^GPU ' <<<"$OUT")"
else
  fact docker_gpus 0
  fact docker_error "$(tail -n 1 <<<"$OUT")"
fi
"""


def parse_facts(output: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in FACT_LINE.finditer(output)}


def _int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


@dataclass(frozen=True)
class HostFacts:
    instance_id: str
    facts: dict[str, str]


def problems(spec: DeploymentSpec, instance_type: str, host: HostFacts) -> list[str]:
    """What keeps this host from serving ``spec`` on ``instance_type``; empty when ready."""
    itype = get_instance_type(instance_type)
    f, iid = host.facts, host.instance_id
    out = []
    gpus = _int(f.get("gpus")) or 0
    if gpus != itype.gpu_count:
        out.append(f"{iid}: nvidia-smi shows {gpus} of {itype.gpu_count} GPUs")
    want_mib = itype.gpu_memory_gib * 1024 * MEMORY_TOLERANCE
    memory = [int(m) for m in (f.get("memory_mib") or "").split(",") if m.strip().isdigit()]
    small = [f"GPU {i}: {m} MiB" for i, m in enumerate(memory) if m < want_mib]
    if small:
        out.append(f"{iid}: GPU memory below the {itype.gpu_memory_gib} GiB of a {itype.gpu} "
                   f"({', '.join(small)})")
    if itype.nvswitch and f.get("fabric") != "active":
        out.append(f"{iid}: nvidia-fabricmanager is {f.get('fabric') or 'not installed'} "
                   f"(the NVSwitch GPUs of {instance_type} are unusable without it)")
    docker_gpus = _int(f.get("docker_gpus")) or 0
    if docker_gpus != itype.gpu_count:
        why = f": {f['docker_error']}" if f.get("docker_error") else ""
        out.append(f"{iid}: `docker run --gpus all` of the engine image sees {docker_gpus} of "
                   f"{itype.gpu_count} GPUs{why}")
    free, present = _int(f.get("disk_free")), _int(f.get("weights_present")) or 0
    weights = int(spec.model_info.weight_gb * 1e9)
    # With a weights data disk (weights.cache: snapshot) the engine image goes to the system disk.
    split = f.get("weights_disk") == "yes"
    need = max(0, weights - present) + int(weights * WEIGHTS_HEADROOM) + (0 if split else IMAGE_HEADROOM_BYTES)
    if free is None:
        out.append(f"{iid}: could not read the free disk space")
    elif free < need:
        out.append(f"{iid}: {free / 1e9:.0f} GB free on the weights' disk, {need / 1e9:.0f} GB needed "
                   f"({weights / 1e9:.0f} GB of weights, {present / 1e9:.0f} GB already there, plus "
                   + ("5%); the weights disk is too small" if split else
                      "headroom for the engine image); raise cloud.system_disk_gb"))
    system_free = _int(f.get("system_free"))
    if split and (system_free or 0) < IMAGE_HEADROOM_BYTES:
        out.append(f"{iid}: {(system_free or 0) / 1e9:.0f} GB free on the system disk, "
                   f"{IMAGE_HEADROOM_BYTES / 1e9:.0f} GB needed for the engine image; raise cloud.system_disk_gb")
    return out


def listen_script(address: str, ports: tuple[int, ...] = PEER_PORTS, seconds: int = LISTEN_S) -> str:
    """Short-lived TCP listeners on the master's private address, detached so the command
    returns; each closes after one connection or ``seconds``."""
    # Bind every port first, then say so: the caller returns only once they are bound (a
    # fixed sleep lost the race to a slow python start on a loaded host).
    code = ("import socket,sys,threading\n"
            "def bind(p):\n"
            " s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            " s.bind((sys.argv[1],p)); s.listen(1); s.settimeout(float(sys.argv[2])); return s\n"
            "def serve(s):\n"
            " try:\n  s.accept()[0].close()\n except OSError:\n  pass\n"
            "socks=[bind(int(p)) for p in sys.argv[3:]]\n"
            "print('bound',flush=True)\n"
            "[threading.Thread(target=serve,args=(s,)).start() for s in socks]\n")
    ports_words = " ".join(str(int(p)) for p in ports)
    return HEADER + f"""# ServeNest readiness: listeners for the peer check
bound=$(mktemp)
setsid python3 -c {q(code)} {q(address)} {int(seconds)} {ports_words} </dev/null >"$bound" 2>/dev/null &
for _ in $(seq 100); do [ -s "$bound" ] && break; sleep 0.1; done
rm -f "$bound"
echo "servenest-ready: listening={q(address)}"
"""


def probe_script(address: str, ports: tuple[int, ...] = PEER_PORTS) -> str:
    """Connect to each port of ``address``; one ``reach_<port>=yes|no`` fact each."""
    lines = [HEADER.rstrip("\n"), "# ServeNest readiness: reach the master on the peer ports"]
    for port in ports:
        lines.append(f"if timeout 5 bash -c {q(f'exec 3<>/dev/tcp/{address}/{int(port)}')} 2>/dev/null; "
                     f"then echo 'servenest-ready: reach_{int(port)}=yes'; "
                     f"else echo 'servenest-ready: reach_{int(port)}=no'; fi")
    return "\n".join(lines) + "\n"


def peer_problems(worker_id: str, master_id: str, address: str, facts: dict[str, str],
                  ports: tuple[int, ...] = PEER_PORTS) -> list[str]:
    closed = [str(p) for p in ports if facts.get(f"reach_{p}") != "yes"]
    if not closed:
        return []
    return [f"{worker_id}: cannot reach {master_id} at {address} on port(s) {', '.join(closed)} "
            "(Ray/NCCL need them open between the nodes: check the security group)"]


FACTS_TIMEOUT_S = 3600  # the first `docker run` pulls the engine image (tens of GB)
POLL_S = (15.0, 3.0, 600.0)  # an image pull takes minutes; a present image answers in one poll


def check_hosts(assistant, spec: DeploymentSpec, instance_type: str, instances: list[dict],
                image: str, model_dir: str) -> dict:
    """Run the checks on every host (``instances``: role, instance_id, private_ip, master
    first); raise HostCommandError listing every problem, or return what was seen."""
    ids = [i["instance_id"] for i in instances]
    results = assistant.run(ids, facts_script(spec, image, model_dir), name="servenest-readiness",
                            timeout_s=FACTS_TIMEOUT_S, check=False, poll_s=POLL_S)
    issues: list[str] = []
    seen = {}
    for r in results:
        facts = parse_facts(r.output)
        if not facts:
            issues.append(f"{r.instance_id}: the readiness check did not run ({r.status} {r.error})".rstrip())
            continue
        seen[r.instance_id] = facts
        issues += problems(spec, instance_type, HostFacts(r.instance_id, facts))
    if len(instances) == 2 and not issues:
        master, worker = instances
        assistant.run([master["instance_id"]], listen_script(master["private_ip"]),
                      name="servenest-readiness-listen", timeout_s=60)
        [probe] = assistant.run([worker["instance_id"]], probe_script(master["private_ip"]),
                                name="servenest-readiness-probe", timeout_s=60, check=False)
        reach = parse_facts(probe.output)
        seen[worker["instance_id"]] = seen.get(worker["instance_id"], {}) | reach
        issues += peer_problems(worker["instance_id"], master["instance_id"], master["private_ip"], reach)
    if issues:
        raise HostCommandError(f"{spec.name}: hosts are not ready:\n" + "\n".join(f"  - {i}" for i in issues),
                               code="HostNotReady")
    return {"hosts": {iid: {k: v for k, v in f.items() if k != "memory_mib"} for iid, f in seen.items()}}
