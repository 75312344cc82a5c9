"""Expected time to ready of every shipped ECS spec, cold and warm, beside the seeds'.

    .venv/bin/python benchmarks/time_to_ready.py            # a table
    .venv/bin/python benchmarks/time_to_ready.py --json     # the figures per phase

The figures come from servenest/time_to_ready.py (sources and assumptions named there).
The seeds reached ready in about 10 min (QwQ-32B), 30 min (Qwen3-235B) and 30 min
(DeepSeek-R1 on two nodes) from ComputeNest images with the weights baked in. Goal of
issue 13: warm at most 15 min for Qwen3-235B and DeepSeek-R1 dual, 5 min for QwQ-32B.
Columns: cold (fresh account), its weights phase, warm (hosts that hold everything),
cached (new hosts whose weights disk comes from the cache snapshot; specs with
weights.cache: snapshot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from servenest import time_to_ready  # noqa: E402
from servenest.spec import load_spec_file  # noqa: E402


def rows() -> list[dict]:
    out = []
    for path in sorted((REPO / "deployments").glob("*.yaml")):
        spec = load_spec_file(path)
        if spec.topology not in ("ecs-single", "ecs-dual"):
            continue
        est = time_to_ready.estimate(spec)
        phases = {p["name"]: p["seconds"] for p in est["cold"]["phases"]}
        out.append({"spec": spec.name, "model": spec.model, "topology": spec.topology,
                    "weights_gb": spec.model_info.weight_gb, "bandwidth_mbps": spec.cloud.bandwidth_mbps,
                    "cold_s": est["cold"]["total_s"], "warm_s": est["warm"]["total_s"],
                    "cached_s": est["cached"]["total_s"] if "cached" in est else None,
                    "cold_weights_s": phases["weights"], "seed_minutes": est["seed_minutes"],
                    "within_staging_limit": phases["weights"] <= est["staging_limit_s"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    m = time_to_ready.minutes
    print(f"{'spec':22} {'topology':10} {'weights':>8} {'Mbit/s':>6} {'cold':>8} {'(weights)':>9} "
          f"{'warm':>7} {'cached':>7} {'seed':>6} {'limit ok':>8}")
    for r in table:
        seed = f"{r['seed_minutes']} min" if r["seed_minutes"] else "-"
        print(f"{r['spec']:22} {r['topology']:10} {r['weights_gb']:6.0f}GB {r['bandwidth_mbps']:>6} "
              f"{m(r['cold_s']):>8} {m(r['cold_weights_s']):>9} {m(r['warm_s']):>7} "
              f"{m(r['cached_s']) if r['cached_s'] else '-':>7} {seed:>6} "
              f"{'yes' if r['within_staging_limit'] else 'NO':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
