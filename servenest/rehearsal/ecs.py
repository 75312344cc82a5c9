"""A whole cloud on this machine: the API emulator plus hosts that run the real scripts.

``servenest up SPEC --emulate`` and the end-to-end tests use it to run a cloud pipeline
without an account: ROS stacks and Cloud Assistant are emulated, the host scripts really
run (hosts of a public image start bare, and the host bootstrap installs the driver,
docker and the toolkit through stand-in apt-get/curl; shims stand in for docker,
nvidia-smi and modelscope), and each emulated instance serves
the built-in tiny model with the real CPU vLLM on its own loopback address.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servenest import paths
from servenest.cloud.api import EMULATOR_ENV, TIME_SCALE_ENV
from servenest.rehearsal.cloud import CloudEmulator
from servenest.rehearsal.hosts import EmulatedHosts

# Emulated stacks finish in a couple of polls; shrink the real-cloud waits to match.
REHEARSAL_TIME_SCALE = "0.02"


def emulated_hosts(emu: CloudEmulator, root: Path, engine: str = "vllm", **kw) -> EmulatedHosts:
    """Hosts wired to the emulator's instances (addresses, types) and its deletions."""
    hosts = EmulatedHosts(root, engine=engine, **kw)
    hosts.address_of = lambda iid: emu.instances[iid]["private_ip"]
    hosts.instance_type_of = lambda iid: (emu.instances.get(iid) or {}).get("instance_type")
    hosts.image_of = lambda iid: (emu.instances.get(iid) or {}).get("image_id")
    hosts.system_disk_gb_of = lambda iid: (emu.instances.get(iid) or {}).get("system_disk_gb")
    hosts.data_disk_of = lambda iid: next(
        ((d["Size"], emu.disk_content(iid)) for d in emu.disks.values() if d["InstanceId"] == iid), None)
    emu.snapshot_source = lambda iid: hosts.sandbox(iid) / "root" / "llm-model"
    emu.snapshot_root = Path(root) / ".snapshots"
    emu.command_handler = hosts.run
    emu.on_instances_released = hosts.release
    emu.require_known_instances = True
    return hosts


@contextmanager
def emulated_cloud(engine: str = "vllm", root: Path | None = None, *,
                   time_scale: str = REHEARSAL_TIME_SCALE, **emulator_kw) -> Iterator[CloudEmulator]:
    """Start the emulator and hosts, point the SDK clients at them; stop everything after."""
    emu = CloudEmulator(instance_address="auto", **emulator_kw)
    hosts = emulated_hosts(emu, root or paths.home() / "emulator" / "hosts", engine)
    emu.hosts = hosts
    emu.start()
    try:
        with sdk_pointed_at(emu.endpoint, time_scale):
            yield emu
    finally:
        emu.stop()
        hosts.close()  # no emulated engine outlives the rehearsal


@contextmanager
def sdk_pointed_at(endpoint: str, time_scale: str) -> Iterator[None]:
    """The SDK clients talk to the emulator at ``endpoint``, and cloud waits shrink, until exit."""
    saved = {k: os.environ.get(k) for k in (EMULATOR_ENV, TIME_SCALE_ENV)}
    os.environ[EMULATOR_ENV] = endpoint
    os.environ[TIME_SCALE_ENV] = time_scale
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
