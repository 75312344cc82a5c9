"""Heal figures on the local topology with the real vLLM engine: detection lag and
detect-to-healed time.

    .venv/bin/python benchmarks/heal.py [--runs 3] [--period 5]

The deployment is provisioned once, against a Prefect server started for the run. Watch passes run every ``--period`` seconds (what the
``watch/<name>`` schedule does every 5 minutes); at a random moment within a period the
engine's process group is killed. Detection lag: kill to the end of the pass that reports
``down`` (goal: within one watch period). Then the heal flow runs, as the automation would;
detect-to-healed: that pass to heal's gate passing, split into engine start-up (heal's
relaunch to the first /health 200) and everything else (goal: 10 s or less).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.local_pipeline import HealthProbe  # noqa: E402 - the repository root first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(name: str, port: int, period: float, rng: random.Random) -> dict:
    from blocks.endpoint import ServeNestEndpoint
    from flows.heal import heal
    from flows.watch import watch
    from servenest.state import load_state

    pgid = load_state(name).engine["pgid"]
    t0 = time.time()
    time.sleep(rng.uniform(0, period))
    os.killpg(pgid, signal.SIGKILL)
    killed = time.time()
    k = 1
    while True:
        time.sleep(max(0.0, t0 + k * period - time.time()))
        if watch(name)["event"] == "servenest.endpoint.down":
            detected = time.time()
            break
        k += 1
    probe = HealthProbe(port)
    probe.start()
    result = heal(name)
    probe.stop.set()
    assert result["healed"], result
    healed = ServeNestEndpoint.load(name).last_gate["at"]
    started = load_state(name).engine["started_at"]
    engine_s = probe.first_ok - started
    return {"detection_lag_s": detected - killed, "detect_to_healed_s": healed - detected,
            "engine_startup_s": engine_s, "everything_else_s": healed - detected - engine_s,
            "rung": result["healed_by"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--period", type=float, default=5.0, help="seconds between watch passes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    from flows.provision import provision
    from flows.teardown import teardown
    from servenest.cli import ensure_key
    from servenest.spec import load_spec_data, load_spec_file
    from tests.integration.servers import drain_client_workers, prefect_server

    data = load_spec_file(REPO / "deployments" / "local-tiny.yaml").model_dump(mode="json", exclude_unset=True)
    port = free_port()
    data.update(name="bench-heal", access={**data["access"], "port": port})
    spec = load_spec_data(data)
    rng = random.Random(args.seed)
    # A Prefect server of its own, as the integration tests use: nothing lands in another's.
    with tempfile.TemporaryDirectory() as home, prefect_server(Path(home)) as server, server.settings():
        ensure_key(spec.access.api_key_secret, quiet=True)
        provision(spec)
        try:
            runs = [one_run(spec.name, port, args.period, rng) for _ in range(args.runs)]
        finally:
            teardown(spec.name)
            drain_client_workers()
    for i, r in enumerate(runs, 1):
        print(f"run {i}: detection lag {r['detection_lag_s']:.2f} s (period {args.period:.0f} s); "
              f"detect->healed {r['detect_to_healed_s']:.2f} s = engine start-up {r['engine_startup_s']:.2f} s "
              f"+ everything else {r['everything_else_s']:.2f} s; healed by {r['rung']}")
    lag = max(r["detection_lag_s"] for r in runs)
    rest = statistics.median(r["everything_else_s"] for r in runs)
    print(f"\nworst detection lag {lag:.2f} s (goal: within one period, {args.period:.0f} s: "
          f"{'met' if lag <= args.period + 1 else 'MISSED'}); median detect->healed beyond engine "
          f"start-up {rest:.2f} s (goal <= 10 s: {'met' if rest <= 10 else 'MISSED'})")


if __name__ == "__main__":
    main()
