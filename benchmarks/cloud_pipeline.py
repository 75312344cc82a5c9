"""Cloud API cost and fault tolerance of the ECS pipeline, against the local emulator.

    .venv/bin/python benchmarks/cloud_pipeline.py calls            # API calls per provision + teardown
    .venv/bin/python benchmarks/cloud_pipeline.py faults --runs 100  # 30% throttling + random 5xx

``calls``: one ecs-single lifecycle (preflight, price, provision, host bootstrap, readiness
check, stage, launch, the gate's liveness checks, teardown) with the DEFAULT polling
schedules, on a virtual clock: the stack takes ``--create-s`` to create and ``--delete-s``
to delete, the bootstrap ``--bootstrap-s`` (cold: driver, docker and toolkit installed),
the readiness check ``--pull-s`` (its `docker run` pulls the engine image), staging
``--staging-s``, the engine ``--load-s`` to load (the gate checks liveness through Cloud
Assistant at most every ``status_cache_s``). ``--warm``: a host that has it all (bootstrap
finds its stamp, the image is there, the weights verify in place). ``--cache``: the spec
keeps a weights cache (one DescribeSnapshots before the stack; cold: DescribeDisks and
CreateSnapshot after staging; with ``--warm`` the entry exists and the disks come from it).
Target: 60 calls or fewer.

``faults``: ``--runs`` real provision + teardown flows (Prefect, the health gate against the
no-op engine on each emulated instance) with ``--throttle`` throttling, ``--errors`` 5xx
(half ServiceUnavailable, half InternalError) and ``--lost`` responses lost after the action
took effect, on every API. Counts failed pipelines, stacks left at the end, and duplicates
(a deployment with two live stacks at once, watched every 20 ms, or one ClientToken that
made two stacks). Target: 0, 0, 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)

from servenest.cloud.api import EMULATOR_ENV, CloudTimings  # noqa: E402
from servenest.rehearsal.cloud import CloudEmulator  # noqa: E402
from servenest.spec import load_spec_data  # noqa: E402
from servenest.state import DeploymentState  # noqa: E402

SPEC = {
    "name": "bench-ecs", "model": "Qwen/Qwen3-8B", "topology": "ecs-single",
    "access": {"api_key_secret": "bench-key"},
    "cloud": {"zones": ["cn-hangzhou-i", "cn-hangzhou-j"], "instance_types": ["ecs.gn7i-2x.8xlarge"]},
}


class VirtualClock:
    def __init__(self):
        self.t = 0.0
        self.lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += max(0.0, seconds)


def host_answers(content: str, _iid: str):
    if "ServeNest host bootstrap" in content:
        return 0, "servenest-bootstrap: ready version=1 driver=535.183.06 gpus=2\n"
    if "ServeNest readiness facts" in content:
        return 0, "".join(f"servenest-ready: {k}={v}\n" for k, v in (
            ("gpus", 2), ("memory_mib", "23028,23028"), ("fabric", "inactive"), ("disk_free", 190 * 10**9),
            ("weights_present", 0), ("docker_gpus", 2)))
    if "ServeNest staging" in content:
        reused = "skipping download\n" if "FULL_VERIFY=1" in content else ""  # the cache's copy checks out
        return 0, f"{reused}servenest-weights: files=12 bytes=16400000000 digest={'a' * 64}\n"
    if "docker inspect" in content:
        return 0, "running 0 0\n"
    return 0, "ok\n"


def count_calls(args) -> dict:
    from servenest.topology.ecs import EcsTopology

    clock = VirtualClock()

    if args.warm:
        args.bootstrap_s, args.pull_s, args.staging_s = 5.0, 10.0, 30.0

    def took(script: str) -> float:
        if "ServeNest host bootstrap" in script:
            return args.bootstrap_s
        if "ServeNest readiness facts" in script:
            return args.pull_s
        if "ServeNest staging" in script:
            return args.staging_s
        if "ServeNest launch" in script:
            return 5.0
        return 1.0

    emu = CloudEmulator(instance_address="auto", create_polls=None, create_seconds=args.create_s,
                        delete_seconds=args.delete_s, invocation_seconds=took, invocation_polls=0,
                        clock=clock.now, command_handler=host_answers, require_known_instances=True)
    with emu, tempfile.TemporaryDirectory() as home:
        os.environ["SERVENEST_HOME"] = home
        os.environ[EMULATOR_ENV] = emu.endpoint
        os.environ.pop("SERVENEST_CLOUD_TIME_SCALE", None)
        data = dict(SPEC)
        if args.cache:
            data["weights"] = {"cache": "snapshot"}
            if args.warm:  # an entry made by an earlier provision
                emu.snapshots["s-warmentry0000000000"] = {
                    "SnapshotId": "s-warmentry0000000000", "Status": "accomplished", "_polls": 9,
                    "_fails": False, "_disks_made": 0, "SourceDiskId": "", "CreationTime": "2026-12-01T00:00:00Z",
                    "Tags": {"Tag": [{"TagKey": k, "TagValue": v} for k, v in {
                        "servenest:cache": "weights", "servenest:model": SPEC["model"],
                        "servenest:revision": "default", "servenest:digest": "a" * 64}.items()]}}
        spec = load_spec_data(data)
        topo = EcsTopology(spec, DeploymentState(spec.name, spec.topology))
        topo.clock = clock.now
        topo.session.sleep = clock.sleep
        phases: dict[str, int] = {}

        def phase(name: str, fn) -> None:
            before = emu.call_count
            fn()
            phases[name] = emu.call_count - before

        phase("preflight", topo.preflight)
        phase("price", topo.estimate)
        phase("provision", topo.provision)
        phase("bootstrap hosts", topo.prepare_hosts)
        phase("check hosts", topo.check_hosts)
        phase("stage weights", topo.stage_weights)
        phase("launch", lambda: topo.launch("sk-bench"))

        def gate() -> None:  # the gate polls liveness every 0.1 s while the engine loads
            start = clock.now()
            while clock.now() - start < args.load_s:
                topo.status()
                clock.sleep(0.1)

        phase("gate liveness", gate)
        phase("teardown", topo.teardown)
    total = sum(phases.values())
    return {"calls_total": total, "target": 60, "met": total <= 60, "per_phase": phases,
            "modelled_seconds": {"create": args.create_s, "delete": args.delete_s, "warm": args.warm,
                                 "cache": args.cache,
                                 "bootstrap": args.bootstrap_s, "image_pull": args.pull_s,
                                 "staging": args.staging_s, "engine_load": args.load_s},
            "timings": CloudTimings().__dict__}


def fault_run(args) -> dict:
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    from flows.provision import provision
    from flows.teardown import teardown
    from servenest.rehearsal.ecs import emulated_cloud

    home = tempfile.mkdtemp(prefix="servenest-faults-")
    os.environ["SERVENEST_HOME"] = home
    failures: list[str] = []
    duplicates: list[str] = []
    started = time.monotonic()
    with prefect_test_harness(server_startup_timeout=90), \
            emulated_cloud("noop", Path(home) / "hosts", time_scale=str(args.time_scale), seed=args.seed) as emu:
        Secret(value="sk-fault-run-key").save("bench-key", overwrite=True)
        emu.faults.update({"throttle_rate": args.throttle, "error_rate": args.errors,
                           "lost_response_rate": args.lost, "retry_after_ms": 20})
        stop = threading.Event()

        def watch() -> None:  # two live stacks of one deployment at any moment is a duplicate
            while not stop.is_set():
                with emu.lock:
                    live = collections.Counter(s.name for s in emu.stacks.values()
                                               if s.status not in ("DELETE_COMPLETE",) and not s.gone)
                for name, n in live.items():
                    if n > 1:
                        duplicates.append(name)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for i in range(args.runs):
            data = json.loads(json.dumps(SPEC))
            data["name"] = f"fault-{i:03d}"
            data["access"]["port"] = 18000 + i % 1000
            data["health"] = {"deadline_s": 60}
            spec = load_spec_data(data)
            try:
                provision(spec)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                failures.append(f"{spec.name} provision: {type(exc).__name__}: {exc}"[:300])
            try:
                teardown(spec.name)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{spec.name} teardown: {type(exc).__name__}: {exc}"[:300])
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.runs} runs, {len(failures)} failures", file=sys.stderr, flush=True)
        stop.set()
        watcher.join()
        leaked = [s.name for s in emu.stacks.values() if s.status != "DELETE_COMPLETE"]
        creates = [c for c in emu.calls if c.action == "CreateStack"]
        injected = collections.Counter(c.code for c in emu.calls if c.code)
        stacks_made = len(emu.stacks)
        distinct_tokens = len({c.params.get("ClientToken") for c in creates})
    return {
        "runs": args.runs, "failed_pipelines": len(failures), "leaked_stacks": len(leaked),
        "duplicate_stacks": len(set(duplicates)) + max(0, stacks_made - distinct_tokens),
        "stacks_created": stacks_made, "create_stack_calls": len(creates),
        "api_calls": len(emu.calls), "errors_injected": dict(injected),
        "wall_s": round(time.monotonic() - started, 1), "failures": failures[:10], "leaked": leaked[:10],
        "met": not failures and not leaked and not duplicates,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("calls")
    c.add_argument("--create-s", type=float, default=300.0)
    c.add_argument("--delete-s", type=float, default=120.0)
    c.add_argument("--staging-s", type=float, default=600.0)
    c.add_argument("--bootstrap-s", type=float, default=600.0)
    c.add_argument("--pull-s", type=float, default=300.0)
    c.add_argument("--warm", action="store_true")
    c.add_argument("--cache", action="store_true")
    c.add_argument("--load-s", type=float, default=180.0)
    f = sub.add_parser("faults")
    f.add_argument("--runs", type=int, default=100)
    f.add_argument("--throttle", type=float, default=0.3)
    f.add_argument("--errors", type=float, default=0.1)
    f.add_argument("--lost", type=float, default=0.03)
    f.add_argument("--time-scale", type=float, default=0.002)
    f.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    # A killed run still stops its emulated engines and Prefect server (context managers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = count_calls(args) if args.what == "calls" else fault_run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
