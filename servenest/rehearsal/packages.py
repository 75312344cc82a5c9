"""What an emulated host's image has installed, and the stand-ins that install more.

A public image (``ubuntu_22``, ``ubuntu_22_04_uefi``) starts bare: no NVIDIA driver,
docker or nvidia-container-toolkit, so their shims (``INSTALLABLE``) are not on the
host's PATH until the host bootstrap (servenest/cloud/bootstrap.py) installs the packages
that provide them through the stand-in ``apt-get``. A custom image (any other image id)
starts with everything installed and running. The host's package, service and kernel
module state lives in ``<sandbox>/packages.json``; ``/etc`` and ``/var`` of the host are
``<sandbox>/etc`` and ``<sandbox>/var``.

Stand-ins for the base image's own tools: ``apt-get``, ``apt-mark``, ``dpkg-query``,
``curl`` (the metadata server answers the in-region mirror; any other URL is saved as a
small stand-in file and listed in ``<sandbox>/downloads.log``), ``systemctl``,
``systemd-run`` (a scheduled reboot reboots at once), ``modprobe``; and, once installed,
``nvidia-ctk`` and ``ibv_devices``.

Faults (files under ``<root>/.faults``, set through :class:`EmulatedHosts`):
``fail-driver-install`` (the next N driver installs fail in DKMS), ``nouveau`` (the
driver module loads only after a reboot).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path

BASE_TOOLS = ("apt-get", "apt-mark", "dpkg-query", "curl", "systemctl", "systemd-run", "modprobe",
              "mountpoint", "blkid", "lsblk", "mkfs.ext4", "mount")
# The instance's disks as the host sees them: the system disk, and the data disk ROS
# DiskMappings gave it (the weights disk), whose files are <sandbox>/root/llm-model.
SYSTEM_DISK, DATA_DISK = "/dev/vda", "/dev/vdb"
WEIGHTS_DIR = ("root", "llm-model")
INSTALLABLE = ("docker", "nvidia-smi", "nvidia-ctk", "ibv_devices")
NOTE = "servenest rehearsal:"
MIRROR = "http://mirrors.cloud.aliyuncs.com"
METADATA_MIRROR = "http://100.100.100.200/latest/meta-data/source-address"
# Which package provides which tools and services.
_PROVIDES: list[tuple[re.Pattern, tuple[str, ...], tuple[str, ...]]] = [
    (re.compile(r"cuda-drivers(-\d+)?|nvidia-driver-\d+(-server)?"), ("nvidia-smi",), ()),
    (re.compile(r"nvidia-fabricmanager(-\d+)?"), (), ("nvidia-fabricmanager",)),
    (re.compile(r"docker-ce"), ("docker",), ("docker",)),
    (re.compile(r"nvidia-container-toolkit"), ("nvidia-ctk",), ()),
    (re.compile(r"ibverbs-utils"), ("ibv_devices",), ()),
]
_DRIVER = re.compile(r"cuda-drivers(-\d+)?|nvidia-driver-\d+(-server)?")
PREPARED_DRIVER = "550.127.08"
OS_RELEASE = """PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""
_PUBLIC_IMAGE = re.compile(r"^(ubuntu|centos|debian|aliyun|alibaba|rockylinux|almalinux|anolisos)", re.I)


def is_bare_image(image: str | None) -> bool:
    """Alibaba's public OS images carry no GPU software; ``None`` (unknown) is prepared."""
    return bool(image) and bool(_PUBLIC_IMAGE.match(image))


# -- the host's state ------------------------------------------------------------------------
def _state_path(host_dir: Path) -> Path:
    return host_dir / "packages.json"


def load(host_dir: Path) -> dict:
    try:
        return json.loads(_state_path(host_dir).read_text())
    except (OSError, ValueError):
        return {"packages": {}, "services": {}, "module_loaded": False, "boots": 1}


def save(host_dir: Path, state: dict) -> None:
    path = _state_path(host_dir)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def bin_dir(host_dir: Path) -> Path:
    """Tools the host's installed packages provide (first on its PATH)."""
    return host_dir / "usr" / "bin"


def prepare_image(host_dir: Path, bare: bool, write_shim, data_disk: tuple[int, Path | None] | None = None) -> None:
    """A new host's disks: the OS files, on a prepared image everything installed, and a
    data disk (size GiB, the snapshot files it was made from or None for a blank one)."""
    if _state_path(host_dir).exists():
        return
    if data_disk is not None:
        size, content = data_disk
        weights = host_dir.joinpath(*WEIGHTS_DIR)
        if content is not None:
            shutil.copytree(content, weights, symlinks=True, dirs_exist_ok=True)
        disk = {"size_gb": size, "label": content is not None, "mounted": False}
    else:
        disk = None
    for directory in ("etc/apt/sources.list.d", "etc/modprobe.d", "var/lib"):  # Ubuntu's own
        (host_dir / directory).mkdir(parents=True, exist_ok=True)
    (host_dir / "etc" / "os-release").write_text(OS_RELEASE)
    bin_dir(host_dir).mkdir(parents=True, exist_ok=True)
    state = load(host_dir)
    state["data_disk"] = disk
    if not bare:
        for pkg in ("cuda-drivers", "nvidia-fabricmanager", "docker-ce", "nvidia-container-toolkit",
                    "ibverbs-utils"):
            _install(host_dir, state, pkg, f"{PREPARED_DRIVER}-1" if pkg != "docker-ce" else "27.3.1",
                     write_shim)
        state["module_loaded"] = True
        state["services"] = {"docker": "active", "nvidia-fabricmanager": "active"}
        _configure_runtime(host_dir)
    save(host_dir, state)


def _install(host_dir: Path, state: dict, pkg: str, version: str, write_shim) -> None:
    state["packages"][pkg] = version
    for pattern, tools, services in _PROVIDES:
        if pattern.fullmatch(pkg):
            for tool in tools:
                write_shim(bin_dir(host_dir), tool)
            for service in services:
                state["services"].setdefault(service, "inactive")


def driver_version(host_dir: Path) -> str | None:
    for pkg, version in load(host_dir)["packages"].items():
        if _DRIVER.fullmatch(pkg):
            return version.split("-")[0]
    return None


def module_loaded(host_dir: Path) -> bool:
    return bool(load(host_dir).get("module_loaded"))


def runtime_configured(host_dir: Path) -> bool:
    try:
        return "nvidia" in json.loads((host_dir / "etc" / "docker" / "daemon.json").read_text()).get("runtimes", {})
    except (OSError, ValueError):
        return False


def _configure_runtime(host_dir: Path) -> None:
    path = host_dir / "etc" / "docker" / "daemon.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = {}
    config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    path.write_text(json.dumps(config, indent=4) + "\n")


# -- faults ----------------------------------------------------------------------------------
def _fault_path(root: Path, name: str) -> Path:
    return root / ".faults" / name


def read_fault(root: Path, name: str) -> int:
    try:
        return int(_fault_path(root, name).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_fault(root: Path, name: str, value: int) -> None:
    path = _fault_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(int(value)))


def _take_fault(root: Path, name: str) -> bool:
    left = read_fault(root, name)
    if left <= 0:
        return False
    write_fault(root, name, left - 1)
    return True


# -- the stand-ins ---------------------------------------------------------------------------
def _err(*lines: str) -> None:
    print("\n".join(lines), file=sys.stderr)


def apt_get(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        _err("E: Invalid operation")
        return 100
    op, pkgs = words[0], words[1:]
    if op == "update":
        print(f"Reading package lists... Done ({NOTE} the emulated mirror answers every source)")
        return 0
    if op != "install":
        _err(f"{NOTE} apt-get {op} is not emulated (install, update)")
        return 100
    state = load(host_dir)
    for spec in pkgs:
        name, _, version = spec.partition("=")
        if _DRIVER.fullmatch(name) and _take_fault(root, "fail-driver-install"):
            _err(f"Setting up {name} ({version or 'latest'}) ...",
                 "Error! Bad return status for module build on kernel: 5.15.0-125-generic (x86_64)",
                 "Consult /var/lib/dkms/nvidia/make.log for more information.",
                 f"dpkg: error processing package {name} (--configure):",
                 " installed nvidia-dkms package post-installation script subprocess returned error exit status 10",
                 "E: Sub-process /usr/bin/dpkg returned an error code (1)")
            return 100
        _install(host_dir, state, name, version or "1.0-emulated", write_shim)
        print(f"Setting up {name} ({version or '1.0-emulated'}) ...")
    save(host_dir, state)
    return 0


def apt_mark(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    if argv[:1] == ["hold"]:
        for pkg in argv[1:]:
            print(f"{pkg} set on hold.")
        return 0
    _err(f"{NOTE} apt-mark {' '.join(argv[:1])} is not emulated")
    return 1


def dpkg_query(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    fmt, names, words = "${Package}\t${Version}\n", [], iter(argv)
    for word in words:
        if word.startswith("-f=") or word.startswith("--showformat="):
            fmt = word.split("=", 1)[1]
        elif word in ("-f", "--showformat"):
            fmt = next(words, fmt)
        elif not word.startswith("-"):
            names.append(word)
    packages = load(host_dir)["packages"]
    code = 0
    for name in names:
        if name not in packages:
            _err(f"dpkg-query: no packages found matching {name}")
            code = 1
            continue
        out = (fmt.replace("${Status}", "install ok installed").replace("${Version}", packages[name])
               .replace("${Package}", name).replace("\\n", "\n").replace("\\t", "\t"))
        sys.stdout.write(out)
    return code


def curl(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    out, urls, words = None, [], iter(argv)
    for word in words:
        if word in ("-o", "--output"):
            out = next(words, None)
        elif word in ("--max-time", "-m", "-H", "--header", "-w", "--retry"):
            next(words, None)
        elif not word.startswith("-"):
            urls.append(word)
    if len(urls) != 1:
        _err(f"{NOTE} curl takes one URL here, got {urls}")
        return 2
    url = urls[0]
    with open(host_dir / "downloads.log", "a") as fh:
        fh.write(url + "\n")
    body = MIRROR + "\n" if url == METADATA_MIRROR else f"# {NOTE} stand-in for {url}\n"
    if out is None:
        sys.stdout.write(body)
    elif out != "/dev/null":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(body)
    return 0


def systemctl(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    words = [a for a in argv if not a.startswith("-")]
    quiet = "--quiet" in argv or "-q" in argv
    if not words:
        _err(f"{NOTE} systemctl needs a command")
        return 1
    op, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    if op == "daemon-reload":
        return 0
    if op == "reboot":
        return reboot(host_dir, root)
    state = load(host_dir)
    services = state["services"]
    for unit in units:
        if unit not in services:
            if op == "is-active":
                if not quiet:
                    print("inactive")
                return 3
            _err(f"Failed to {op} {unit}.service: Unit {unit}.service not found.")
            return 5
    if op == "is-active":
        code = 0
        for unit in units:
            status = _service_status(host_dir, root, state, unit)
            if not quiet:
                print(status)
            code = code or (0 if status == "active" else 3)
        return code
    if op in ("enable", "start", "restart"):
        if op != "enable" or "--now" in argv:
            for unit in units:
                if unit == "nvidia-fabricmanager" and not state.get("module_loaded"):
                    _err("Job for nvidia-fabricmanager.service failed because the control process exited "
                         "with error code.")
                    return 1
                services[unit] = "active"
        save(host_dir, state)
        return 0
    if op == "stop":
        for unit in units:
            services[unit] = "inactive"
        save(host_dir, state)
        return 0
    _err(f"{NOTE} systemctl {op} is not emulated")
    return 1


def _service_status(host_dir: Path, root: Path, state: dict, unit: str) -> str:
    if unit == "nvidia-fabricmanager" and read_fault(root, "fabric-down"):
        return "failed"
    return state["services"].get(unit, "inactive")


def reboot(host_dir: Path, root: Path) -> int:
    """The host comes back: services that are enabled run, nouveau no longer holds the GPU."""
    state = load(host_dir)
    state["boots"] = state.get("boots", 1) + 1
    state["nouveau_gone"] = True
    state["module_loaded"] = driver_version(host_dir) is not None
    save(host_dir, state)
    return 0


def systemd_run(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    command = [a for a in argv if not a.startswith("-")]
    if command[-1:] == ["reboot"] or command[-2:] == ["/bin/systemctl", "reboot"]:
        print(f"Running timer as unit: run-u1.timer ({NOTE} the host reboots now)")
        return reboot(host_dir, root)
    _err(f"{NOTE} systemd-run runs only a scheduled reboot here")
    return 1


def modprobe(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    modules = [a for a in argv if not a.startswith("-")]
    state = load(host_dir)
    for module in modules:
        if module != "nvidia":
            continue
        if driver_version(host_dir) is None:
            _err("modprobe: FATAL: Module nvidia not found in directory /lib/modules/5.15.0-125-generic")
            return 1
        if read_fault(root, "nouveau") and not state.get("nouveau_gone"):
            _err("modprobe: ERROR: could not insert 'nvidia': No such device (nouveau holds the GPU)")
            return 1
        state["module_loaded"] = True
    save(host_dir, state)
    return 0


def nvidia_ctk(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    if argv[:2] != ["runtime", "configure"] or "--runtime=docker" not in argv:
        _err(f"{NOTE} only `nvidia-ctk runtime configure --runtime=docker` is emulated")
        return 1
    _configure_runtime(host_dir)
    print('INFO[0000] Wrote updated config to /etc/docker/daemon.json')
    print('INFO[0000] It is recommended that docker daemon be restarted.')
    return 0


def ibv_devices(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    print("    device                 node GUID\n    ------              ----------------\n"
          "    erdma_0             02163efffe0a1b2c")
    return 0


def _disk(host_dir: Path) -> dict | None:
    return load(host_dir).get("data_disk")


def mountpoint(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    path = Path([a for a in argv if not a.startswith("-")][-1])
    disk = _disk(host_dir)
    if path == host_dir.joinpath(*WEIGHTS_DIR) and disk and disk["mounted"]:
        return 0
    if "-q" not in argv:
        print(f"{path} is not a mountpoint")
    return 32


def blkid(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    disk = _disk(host_dir)
    if "-L" in argv and disk and disk["label"] and argv[argv.index("-L") + 1] == "servenest-weights":
        print(DATA_DISK)
        return 0
    return 2


def lsblk(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    disk = _disk(host_dir)
    devices = [a for a in argv if a.startswith("/dev/")]
    if not devices:  # -dpno NAME,TYPE: the whole disks
        print(f"{SYSTEM_DISK} disk")
        if disk:
            print(f"{DATA_DISK} disk")
        return 0
    for dev in devices:
        if dev == SYSTEM_DISK:
            print("ext4" if "FSTYPE" in " ".join(argv) else "vda\nvda1\nvda2")
        elif dev == DATA_DISK and disk:
            print(("ext4" if disk["label"] else "") if "FSTYPE" in " ".join(argv) else "vdb")
        else:
            _err(f"lsblk: {dev}: not a block device")
            return 32
    return 0


def mkfs_ext4(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    state = load(host_dir)
    disk = state.get("data_disk")
    if argv[-1:] != [DATA_DISK] or not disk:
        _err(f"mke2fs: {NOTE} only the blank data disk {DATA_DISK} can be formatted here")
        return 1
    disk["label"] = True
    shutil.rmtree(host_dir.joinpath(*WEIGHTS_DIR), ignore_errors=True)  # a new, empty filesystem
    save(host_dir, state)
    return 0


def mount(host_dir: Path, root: Path, argv: list[str], write_shim) -> int:
    state = load(host_dir)
    disk = state.get("data_disk")
    fstab = host_dir / "etc" / "fstab"
    target = Path([a for a in argv if not a.startswith("-")][-1])
    if (target != host_dir.joinpath(*WEIGHTS_DIR) or not disk or not disk["label"]
            or "LABEL=servenest-weights" not in (fstab.read_text() if fstab.exists() else "")):
        _err(f"mount: {target}: can't find in /etc/fstab.")
        return 1
    target.mkdir(parents=True, exist_ok=True)
    disk["mounted"] = True
    save(host_dir, state)
    return 0


def data_disk_free(host_dir: Path) -> int | None:
    """Bytes free on the mounted weights disk (None when the weights live on the system disk)."""
    disk = _disk(host_dir)
    if not disk or not disk["mounted"]:
        return None
    weights = host_dir.joinpath(*WEIGHTS_DIR)
    used = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file() and not p.is_symlink())
    return max(0, disk["size_gb"] * 2**30 - used)


HANDLERS = {"apt-get": apt_get, "apt-mark": apt_mark, "dpkg-query": dpkg_query, "curl": curl,
            "systemctl": systemctl, "systemd-run": systemd_run, "modprobe": modprobe,
            "nvidia-ctk": nvidia_ctk, "ibv_devices": ibv_devices, "mountpoint": mountpoint, "blkid": blkid,
            "lsblk": lsblk, "mkfs.ext4": mkfs_ext4, "mount": mount}
