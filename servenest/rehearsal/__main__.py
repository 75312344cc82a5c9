"""``python -m servenest.rehearsal``: the cloud emulator on its own, for Prefect workers and tools.

Kept apart from ``cloud`` so the API emulator never imports the hosts wired to it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from servenest import paths
from servenest.rehearsal.cloud import CloudEmulator
from servenest.rehearsal.ecs import emulated_hosts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Alibaba Cloud ROS/ECS/CS emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instance-address", default="127.0.0.1")
    parser.add_argument("--create-polls", type=int, default=2)
    parser.add_argument("--cluster", action="append", default=[], help="pre-create a cluster id")
    parser.add_argument(
        "--hosts", choices=["none", "vllm", "noop"], default="none",
        help="run Cloud Assistant scripts on emulated hosts serving the real CPU vLLM (or the "
        "no-op server); instances then get their own loopback addresses",
    )
    parser.add_argument("--hosts-dir", default=None, help="where emulated hosts keep their files")
    args = parser.parse_args(argv)
    emu = CloudEmulator(
        host=args.host,
        port=args.port,
        seed=args.seed,
        instance_address="auto" if args.hosts != "none" else args.instance_address,
        create_polls=args.create_polls,
    )
    hosts = None
    if args.hosts != "none":
        root = Path(args.hosts_dir) if args.hosts_dir else paths.home() / "emulator" / "hosts"
        hosts = emulated_hosts(emu, root, args.hosts)
    for cid in args.cluster:
        emu.add_cluster(cid)
    emu.start()
    print(f"cloud emulator listening on http://{emu.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
        if hosts is not None:
            hosts.close()


if __name__ == "__main__":
    main()
