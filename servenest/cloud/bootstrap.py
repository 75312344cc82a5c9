"""Host bootstrap: take a public Ubuntu 22.04 image to a host that can serve.

One bash script, rendered per (spec, instance type), run through Cloud Assistant as its
own stage after the stack exists and before staging. It installs, each step only when
missing (so a rerun on a ready host does nothing and takes seconds):

- the NVIDIA data-center driver of the branch pinned for the GPU kind (``DRIVER_PINS``),
  held so ``apt-get upgrade`` cannot move it;
- on NVSwitch machines (``InstanceType.nvswitch``, the 8 x H20 ebmgn8v),
  ``nvidia-fabricmanager`` of exactly the driver's version, enabled and running;
- docker (docker-ce) and nvidia-container-toolkit, configured as docker's runtime;
- on ``ecs-dual``, the RDMA user-space (rdma-core, ibverbs) and Alibaba's eRDMA
  installer, which seed 001's NCCL settings (``NCCL_IB_*``) need.

Sources: Alibaba's own ROS example installs the data-center driver from NVIDIA's
repository in a RunCommand and checks ``nvidia-smi`` (aliyun/ros-templates,
documents/solution/ai/use-gpu-ecs-to-deploy-chatGLM.yaml); ComputeNest's GPU quickstarts
ask the metadata server for the in-region mirror (``100.100.100.200/latest/meta-data/
source-address``) and pin driver 550.127.08 with CUDA 12.4.1
(aliyun-computenest/quickstart-LobeChat, lobe-chat-gpu/init_gpu.sh). Packages come from
that in-region mirror where it carries them (Ubuntu, docker-ce, NVIDIA's CUDA repository),
else from the vendor's repository.

A custom image (``cloud.image_prepared: true``) is only checked: the same readiness test,
no installs; a missing piece is a clear error naming the host and the piece.

Reboots: a driver whose module cannot load at once (nouveau held the GPU) leaves the
stamp at ``driver-installed``, schedules a reboot a few seconds out (so Cloud Assistant
gets the result first) and prints ``REBOOT_LINE``; :func:`run_bootstrap` waits and runs
the script again, which continues where it stopped.

Its version (``BOOTSTRAP_VERSION``) is written to the host's stamp file and to the
deployment's state record, so a changed bootstrap is a visible change and reruns it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from servenest.catalog import get_instance_type
from servenest.cloud.scripts import MODEL_ROOT
from servenest.cloud.weights_cache import FS_LABEL
from servenest.errors import HostCommandError
from servenest.spec import DeploymentSpec

# Bump on any change to what the script installs or checks: hosts stamped with an older
# version run it again (each step still skips what is already in place).
BOOTSTRAP_VERSION = "1"
STAMP = "/var/lib/servenest/bootstrap"
READY_LINE = re.compile(r"servenest-bootstrap: ready version=(\S+) driver=(\S+) gpus=(\d+)")
REBOOT_LINE = "servenest-bootstrap: reboot-required"
# The agent enforces this; a driver's DKMS build plus docker and the toolkit take 5-15 min.
TIMEOUT_S = 3600
POLL_S = (15.0, 3.0, 600.0)  # minutes-long steps: few polls (the API-call budget), a ready host in one
REBOOT_WAIT_S = 180.0  # an ECS GPU instance reboots and its agent reconnects in 1-3 minutes
MAX_REBOOTS = 2
HEADER = "#!/usr/bin/env bash\nset -euo pipefail\n"

q = shlex.quote


@dataclass(frozen=True)
class DriverPin:
    branch: str
    version: str
    why: str


# NVIDIA data-center driver per GPU kind. Versions exist in NVIDIA's CUDA repository for
# ubuntu2204 as cuda-drivers-<branch>=<version>-1 and nvidia-fabricmanager-<branch>=<version>-1.
DRIVER_PINS: dict[str, DriverPin] = {
    # Hopper H20 (ebmgn8v): R550 production branch, the version ComputeNest's GPU quickstarts
    # pin (init_gpu.sh above: DRIVER_VERSION=550.127.08, CUDA 12.4.1); the seeds' egs engine
    # images are CUDA 12.4 builds, which R550 runs natively. Fabric manager ships per branch.
    "H20": DriverPin("550", "550.127.08", "ComputeNest GPU quickstart pin (CUDA 12.4.1); Hopper"),
    # Ada L20 (gn8is): same R550 pin as H20 (Ada is supported from R525 on).
    "L20": DriverPin("550", "550.127.08", "ComputeNest GPU quickstart pin (CUDA 12.4.1); Ada"),
    # Ampere A10 (gn7i): R535, NVIDIA's long-term support branch for data-center Ampere;
    # CUDA 12.4 images run on it through CUDA minor-version compatibility (>= 525.60.13),
    # as the ROS example's 525 does for its CUDA 12 wheels. No NVSwitch, no fabric manager.
    "A10": DriverPin("535", "535.183.06", "R535 LTS branch; Ampere, CUDA 12.x minor-version compatible"),
}
# nvidia-container-toolkit, from NVIDIA's libnvidia-container repository (no in-region copy).
TOOLKIT_VERSION = "1.17.8-1"
TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container/stable/deb"
TOOLKIT_KEY = "https://nvidia.github.io/libnvidia-container/gpgkey"
# What the metadata server answers when asked for the in-region mirror; the fallback.
METADATA_MIRROR = "http://100.100.100.200/latest/meta-data/source-address"
DEFAULT_MIRROR = "http://mirrors.cloud.aliyuncs.com"
NVIDIA_CUDA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64"
# Alibaba's eRDMA installer for GPU (EGS) instances, from the in-region mirror.
ERDMA_SETUP = "erdma/env_setup.sh"


@dataclass(frozen=True)
class HostNeeds:
    """What one host of a spec needs installed (or, on a prepared image, present)."""

    instance_type: str
    gpu: str
    gpu_count: int
    driver: DriverPin
    fabric_manager: bool
    rdma: bool
    prepared: bool
    weights_disk: bool

    def steps(self) -> list[str]:
        """What the bootstrap does, in order, for `servenest plan`."""
        out = [f"weights data disk (label {FS_LABEL}) mounted on {MODEL_ROOT}; a blank one formatted first"
               ] if self.weights_disk else []
        if self.prepared:
            return out + self._check_step()
        out += [
            f"skip everything when {STAMP} says version {BOOTSTRAP_VERSION} and the host checks ready",
            "apt sources from the in-region mirror (metadata source-address, else "
            f"{DEFAULT_MIRROR}): Ubuntu, docker-ce, NVIDIA CUDA repository",
            f"NVIDIA data-center driver {self.driver.version} (cuda-drivers-{self.driver.branch}, held; "
            f"{self.driver.why}); blacklist nouveau; reboot if the module cannot load",
        ]
        if self.fabric_manager:
            out.append(f"nvidia-fabricmanager-{self.driver.branch}={self.driver.version}-1 "
                       "(NVSwitch: CUDA fails without it), enabled and active")
        out += ["docker-ce from the in-region mirror, enabled",
                f"nvidia-container-toolkit {TOOLKIT_VERSION}, `nvidia-ctk runtime configure "
                "--runtime=docker`, docker restarted"]
        if self.rdma:
            out.append("RDMA user-space for NCCL: rdma-core, ibverbs-providers, ibverbs-utils, "
                       "and Alibaba's eRDMA installer (env_setup.sh --egs)")
        out.append(f"verify: nvidia-smi shows {self.gpu_count} GPUs at driver {self.driver.version}, "
                   "docker has the nvidia runtime; write the stamp")
        return out


    def _check_step(self) -> list[str]:
        return [f"check (custom image, cloud.image_prepared): nvidia-smi shows {self.gpu_count} x "
                f"{self.gpu}, docker with the nvidia runtime (nvidia-container-toolkit)"
                + (", nvidia-fabricmanager active" if self.fabric_manager else "")
                + (", RDMA user-space (ibv_devices)" if self.rdma else "")]


def host_needs(spec: DeploymentSpec, instance_type: str) -> HostNeeds:
    itype = get_instance_type(instance_type)
    pin = DRIVER_PINS.get(itype.gpu)
    if pin is None:
        raise ValueError(f"no NVIDIA driver is pinned for {itype.gpu} ({instance_type}); "
                         f"pinned: {', '.join(DRIVER_PINS)}")
    return HostNeeds(instance_type, itype.gpu, itype.gpu_count, pin, itype.nvswitch,
                     spec.topology == "ecs-dual", spec.cloud.image_prepared, spec.weights.cache == "snapshot")


def plan(spec: DeploymentSpec, instance_type: str) -> dict:
    needs = host_needs(spec, instance_type)
    return {"version": BOOTSTRAP_VERSION, "mode": "check" if needs.prepared else "install",
            "instance_type": instance_type, "driver": needs.driver.version,
            "fabric_manager": needs.fabric_manager, "rdma": needs.rdma, "steps": needs.steps(),
            "script": bootstrap_script(spec, instance_type)}


def bootstrap_script(spec: DeploymentSpec, instance_type: str) -> str:
    """The bootstrap for every host of ``spec`` placed on ``instance_type``."""
    n = host_needs(spec, instance_type)
    return HEADER + f"""# ServeNest host bootstrap v{BOOTSTRAP_VERSION}: {q(spec.name)} on {q(instance_type)} ({n.gpu_count} x {n.gpu})
BOOTSTRAP={q(BOOTSTRAP_VERSION)}
STAMP={q(STAMP)}
MODE={"check" if n.prepared else "install"}
GPUS={n.gpu_count}
BRANCH={q(n.driver.branch)}
DRIVER={q(n.driver.version)}
FABRIC={int(n.fabric_manager)}
RDMA={int(n.rdma)}
TOOLKIT={q(TOOLKIT_VERSION)}
export DEBIAN_FRONTEND=noninteractive

say() {{ echo "servenest-bootstrap: $*"; }}
fail() {{ echo "servenest-bootstrap: FAILED: $*" >&2; exit 1; }}
installed() {{ dpkg-query -W -f='${{Status}} ${{Version}}\\n' "$1" 2>/dev/null | grep -q "^install ok installed $2"; }}
apt_install() {{ apt-get install -y -q --no-install-recommends "$@" </dev/null; }}

# Sets WHY and fails when the host cannot serve yet; the same test for both modes.
ready() {{
  WHY=""
  if ! command -v nvidia-smi >/dev/null 2>&1; then WHY="nvidia-smi is not installed (no NVIDIA driver)"; return 1; fi
  if ! HAVE="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1)" \\
      || [[ ! "$HAVE" =~ ^[0-9.]+$ ]]; then
    WHY="nvidia-smi cannot talk to the driver: $HAVE"; return 1
  fi
  if [[ "$MODE" == install && "$HAVE" != "$DRIVER" ]]; then WHY="driver $HAVE is loaded, want $DRIVER"; return 1; fi
  SEEN="$(nvidia-smi -L | grep -c '^GPU ' || true)"
  if (( SEEN != GPUS )); then WHY="nvidia-smi shows $SEEN of $GPUS GPUs"; return 1; fi
  if (( FABRIC )) && ! systemctl is-active --quiet nvidia-fabricmanager; then
    WHY="nvidia-fabricmanager is not active (NVSwitch GPUs stay unusable without it)"; return 1
  fi
  if ! command -v docker >/dev/null 2>&1; then WHY="docker is not installed"; return 1; fi
  if ! command -v nvidia-ctk >/dev/null 2>&1 || ! grep -qs '"nvidia"' /etc/docker/daemon.json; then
    WHY="docker has no nvidia runtime (nvidia-container-toolkit)"; return 1
  fi
  if (( RDMA )) && ! command -v ibv_devices >/dev/null 2>&1; then
    WHY="RDMA user-space (ibverbs-utils) is missing"; return 1
  fi
}}

done_line() {{ say "ready version=$BOOTSTRAP driver=$HAVE gpus=$SEEN"; }}
{_weights_disk_step() if n.weights_disk else ""}
if [[ "$(cat "$STAMP" 2>/dev/null || true)" == "$BOOTSTRAP ready" ]] && ready; then
  say "host was bootstrapped before (stamp $STAMP); nothing to do"
  done_line
  exit 0
fi
if [[ "$MODE" == check ]]; then
  ready || fail "$WHY (cloud.image_prepared says the image carries the driver, docker and nvidia-container-toolkit)"
  install -d "$(dirname "$STAMP")"
  echo "$BOOTSTRAP ready" > "$STAMP"
  done_line
  exit 0
fi

say "step sources: asking the metadata server for the in-region mirror"
MIRROR="$(curl -fsS --max-time 5 {q(METADATA_MIRROR)} 2>/dev/null | head -n 1 || true)"
[[ "$MIRROR" =~ ^https?://[A-Za-z0-9.-]+$ ]] || MIRROR={q(DEFAULT_MIRROR)}
# shellcheck disable=SC1091  # the image's own file
CODENAME="$(. /etc/os-release && echo "$VERSION_CODENAME")"
CUDA_REPO="$MIRROR/nvidia-cuda/ubuntu2204/x86_64"
curl -fsS --max-time 10 -o /dev/null "$CUDA_REPO/Release" || CUDA_REPO={q(NVIDIA_CUDA_REPO)}
say "mirror $MIRROR; CUDA repository $CUDA_REPO"
install -d -m 0755 /etc/apt/keyrings
curl -fsSL "$CUDA_REPO/3bf863cc.pub" -o /etc/apt/keyrings/nvidia-cuda.asc
echo "deb [signed-by=/etc/apt/keyrings/nvidia-cuda.asc] $CUDA_REPO /" > /etc/apt/sources.list.d/servenest-cuda.list
curl -fsSL "$MIRROR/docker-ce/linux/ubuntu/gpg" -o /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] $MIRROR/docker-ce/linux/ubuntu $CODENAME stable" \\
  > /etc/apt/sources.list.d/servenest-docker.list
curl -fsSL {q(TOOLKIT_KEY)} -o /etc/apt/keyrings/nvidia-container-toolkit.asc
echo "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] {TOOLKIT_REPO}/\\$(ARCH) /" \\
  > /etc/apt/sources.list.d/servenest-nvidia-container-toolkit.list
apt-get update -q

say "step driver: NVIDIA $DRIVER (branch $BRANCH)"
if ! installed "cuda-drivers-$BRANCH" "$DRIVER"; then
  printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' > /etc/modprobe.d/blacklist-nouveau.conf
  apt_install "linux-headers-$(uname -r)" dkms \\
    || fail "installing the kernel headers for $(uname -r) failed (see apt's output above)"
  PKGS=("cuda-drivers-$BRANCH=$DRIVER-1")
  if (( FABRIC )); then PKGS+=("nvidia-fabricmanager-$BRANCH=$DRIVER-1"); fi
  apt_install "${{PKGS[@]}}" \\
    || fail "installing NVIDIA driver $DRIVER failed (see apt's output above); nothing was started"
  apt-mark hold "cuda-drivers-$BRANCH" >/dev/null
  if (( FABRIC )); then apt-mark hold "nvidia-fabricmanager-$BRANCH" >/dev/null; fi
fi
if (( FABRIC )) && ! installed "nvidia-fabricmanager-$BRANCH" "$DRIVER"; then
  apt_install "nvidia-fabricmanager-$BRANCH=$DRIVER-1" \\
    || fail "installing nvidia-fabricmanager $DRIVER failed (see apt's output above)"
  apt-mark hold "nvidia-fabricmanager-$BRANCH" >/dev/null
fi
if ! modprobe nvidia; then
  install -d "$(dirname "$STAMP")"
  echo "$BOOTSTRAP driver-installed" > "$STAMP"
  systemd-run --on-active=5 --timer-property=AccuracySec=1 /bin/systemctl reboot >/dev/null
  say "the driver module cannot load until a reboot; rebooting in 5 s"
  echo {q(REBOOT_LINE)}
  exit 0
fi
if (( FABRIC )); then
  systemctl enable --now nvidia-fabricmanager || fail "nvidia-fabricmanager did not start"
fi

say "step docker"
if ! installed docker-ce ""; then
  apt_install docker-ce docker-ce-cli containerd.io || fail "installing docker-ce failed (see apt's output above)"
fi
systemctl enable --now docker

say "step nvidia-container-toolkit $TOOLKIT"
if ! installed nvidia-container-toolkit "$TOOLKIT"; then
  apt_install "nvidia-container-toolkit=$TOOLKIT" "nvidia-container-toolkit-base=$TOOLKIT" \\
    "libnvidia-container-tools=$TOOLKIT" "libnvidia-container1=$TOOLKIT" \\
    || fail "installing nvidia-container-toolkit $TOOLKIT failed (see apt's output above)"
fi
if ! grep -qs '"nvidia"' /etc/docker/daemon.json; then
  nvidia-ctk runtime configure --runtime=docker
  systemctl restart docker
fi

if (( RDMA )); then
  say "step RDMA user-space for NCCL"
  if ! installed ibverbs-utils ""; then
    apt_install rdma-core ibverbs-providers ibverbs-utils || fail "installing the RDMA user-space failed"
  fi
  if [[ ! -e /var/lib/servenest/erdma-installed ]]; then
    curl -fsSL "$MIRROR/{ERDMA_SETUP}" -o /var/lib/servenest/erdma-env-setup.sh
    bash /var/lib/servenest/erdma-env-setup.sh --egs || fail "Alibaba's eRDMA installer failed"
    touch /var/lib/servenest/erdma-installed
  fi
fi

ready || fail "$WHY"
install -d "$(dirname "$STAMP")"
echo "$BOOTSTRAP ready" > "$STAMP"
nvidia-smi -L
done_line
"""


@dataclass(frozen=True)
class HostBootstrap:
    instance_id: str
    driver: str
    gpus: int
    reboots: int
    output: str


def ready_line(output: str) -> tuple[str, str, int] | None:
    m = READY_LINE.search(output)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


def needs_reboot(output: str) -> bool:
    return REBOOT_LINE in output.splitlines()


def run_bootstrap(
    run: Callable[[list[str]], list], instance_ids: list[str], sleep: Callable[[float], None],
    reboot_wait_s: float = REBOOT_WAIT_S,
) -> list[HostBootstrap]:
    """Run the bootstrap (``run(ids)`` -> CommandResults, raising on a failed host) until
    every host prints its ready line, waiting out the reboots a driver install asks for."""
    done: dict[str, HostBootstrap] = {}
    reboots = dict.fromkeys(instance_ids, 0)
    pending = list(instance_ids)
    while pending:
        again = []
        for result in run(pending):
            ready = ready_line(result.output)
            if ready is not None:
                done[result.instance_id] = HostBootstrap(result.instance_id, ready[1], ready[2],
                                                         reboots[result.instance_id], result.output)
            elif needs_reboot(result.output) and reboots[result.instance_id] < MAX_REBOOTS:
                reboots[result.instance_id] += 1
                again.append(result.instance_id)
            else:
                raise HostCommandError(f"bootstrap on {result.instance_id} did not finish"
                                     + (f" after {MAX_REBOOTS} reboots" if needs_reboot(result.output) else "")
                                     + f":\n{result.tail()}", code="BootstrapIncomplete")
        if again:
            sleep(reboot_wait_s)
        pending = again
    return [done[i] for i in instance_ids]


def run_on_hosts(assistant, instance_ids: list[str], script: str, sleep: Callable[[float], None],
                 scale: float = 1.0) -> dict:
    """Bootstrap every host through Cloud Assistant; the record the deployment state keeps,
    plus ``log`` (each host's output, for the run's logs; not saved)."""
    def run(ids: list[str]) -> list:
        return assistant.run(ids, script, name="servenest-bootstrap", timeout_s=TIMEOUT_S, poll_s=POLL_S)

    hosts = run_bootstrap(run, instance_ids, sleep, REBOOT_WAIT_S * scale)
    return {"version": BOOTSTRAP_VERSION,
            "hosts": {h.instance_id: {"driver": h.driver, "gpus": h.gpus, "reboots": h.reboots} for h in hosts},
            "log": {h.instance_id: h.output for h in hosts}}


def _weights_disk_step() -> str:
    """Mount the weights data disk (weights.cache: snapshot): a disk made from a cache
    snapshot carries the label; a blank one is formatted first. Idempotent."""
    root = q(MODEL_ROOT)
    return f"""
# The weights data disk: labelled when made from a cache snapshot, else blank.
if ! mountpoint -q {root}; then
  DISK="$(blkid -L {FS_LABEL} 2>/dev/null || true)"
  if [[ -z "$DISK" ]]; then
    for d in $(lsblk -dpno NAME,TYPE | awk '$2 == "disk" {{print $1}}'); do
      if [[ -z "$(lsblk -no FSTYPE "$d" | tr -d '[:space:]')" && "$(lsblk -no NAME "$d" | wc -l)" == 1 ]]; then
        DISK="$d"
        break
      fi
    done
    [[ -n "$DISK" ]] || fail "no blank data disk for the weights (weights.cache: snapshot)"
    mkfs.ext4 -q -L {FS_LABEL} "$DISK"
  fi
  install -d {root}
  grep -qs 'LABEL={FS_LABEL} ' /etc/fstab || echo 'LABEL={FS_LABEL} {MODEL_ROOT} ext4 defaults,nofail 0 2' >> /etc/fstab
  mount {root}
  say "weights disk $DISK mounted on {MODEL_ROOT}"
fi
"""
