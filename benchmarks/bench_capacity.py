"""How much load the benchmark client can generate before it, not the server, is measured.

    .venv/bin/python benchmarks/bench_capacity.py [--quick]

Starts the no-op streaming server (servenest/rehearsal/openai_noop.py) in its own process on
loopback, pinned to one CPU, pins this client process to another, and measures the load
runner (servenest/bench/runner.py) against it:

  (a) requests/s of one-token responses at request rate inf, max_concurrency 64
      (target >= 2,000 req/s);
  (b) streamed token events per client CPU-second, 400 requests x 512 tokens, concurrency 64
      (target >= 200,000);
  (c) send-lag p99 (sent - scheduled) at 1,000 req/s Poisson, 5,000 requests of 16 tokens
      (target <= 2 ms).

The Poisson schedule is vLLM's (gamma gaps, shape 1, cumsum, rescaled so the last send lands
at N/rate), drawn here with numpy so the script does not depend on the schedule module.
Bounded: about 15 s, loopback only, stops the server itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servenest.bench.runner import run_load  # noqa: E402
from servenest.bench.types import SampleRequest  # noqa: E402
from servenest.rehearsal.openai_noop import spawn  # noqa: E402

MODEL = "noop"


def poisson_offsets(n: int, rate: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    delays = np.cumsum(rng.gamma(shape=1.0, scale=1.0 / rate, size=n))
    return delays * ((n / rate) / delays[-1])


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fifth of the requests")
    ap.add_argument("--workers", type=int, default=1, help="client processes (sharding)")
    args = ap.parse_args()
    scale = 5 if args.quick else 1
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(var, None)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = client_cpus = None
    if len(cpus) >= 2:
        server_cpu, client_cpus = cpus[0], set(cpus[1:])
        os.sched_setaffinity(0, client_cpus)
    print(f"CPUs {cpus or '?'}: server on {server_cpu}, client on {sorted(client_cpus or [])}"
          f"{'' if args.workers == 1 else f', {args.workers} client processes'}")

    ok_all = True
    with spawn(cpu=server_cpu) as server:
        def load(reqs, offsets, cap):
            return run_load(server.url, "/v1/completions", "openai", MODEL, reqs, offsets,
                            max_concurrency=cap, num_warmups=cap or 16, ignore_eos=True,
                            workers=args.workers)

        # (a) one-token requests at rate inf
        n = 10_000 // scale
        cap = 64
        run = load([SampleRequest("hi", 1, 1)] * n, np.zeros(n), cap)
        failed = sum(not r.success for r in run.results)
        rps = (n - failed) / run.duration_s
        ok = rps >= 2000 and not failed
        ok_all &= ok
        print(f"(a) 1-token requests, rate inf, max_concurrency {cap}: {rps:,.0f} req/s "
              f"(target >= 2,000) {verdict(ok)}  [{n} req, {run.duration_s:.2f} s, "
              f"client CPU {run.client_cpu_s / run.duration_s:.0%}, failed {failed}]")

        # (b) long streams: events per client CPU-second
        n, tokens = 400 // scale, 512
        run = load([SampleRequest("hi", 1, tokens)] * n, np.zeros(n), 64)
        failed = sum(not r.success for r in run.results)
        events = sum(len(r.itl) + 1 for r in run.results if r.success)
        per_cpu = events / run.client_cpu_s
        ok = per_cpu >= 200_000 and not failed and events == n * tokens
        ok_all &= ok
        print(f"(b) {n} x {tokens}-token streams, max_concurrency 64: {per_cpu:,.0f} events per "
              f"client CPU-second (target >= 200,000) {verdict(ok)}  [{events:,} events, "
              f"{run.client_cpu_s:.2f} CPU-s in {run.duration_s:.2f} s, failed {failed}]")

        # (c) send lag at 1,000 req/s Poisson
        n, rate = 5000 // scale, 1000.0
        offsets = poisson_offsets(n, rate)
        run = load([SampleRequest("hi", 1, 16)] * n, offsets, None)
        failed = sum(not r.success for r in run.results)
        lag_ms = np.array([r.send_lag_s for r in run.results]) * 1000
        p50, p99, worst = np.percentile(lag_ms, [50, 99, 100])
        ok = p99 <= 2.0 and not failed
        ok_all &= ok
        print(f"(c) send lag at {rate:,.0f} req/s Poisson, {n} requests: p99 {p99:.3f} ms "
              f"(target <= 2 ms) {verdict(ok)}  [p50 {p50:.3f} ms, max {worst:.3f} ms, "
              f"min {lag_ms.min():.3f} ms, achieved {n / run.duration_s:,.0f} req/s, "
              f"client CPU {run.client_cpu_s / run.duration_s:.0%}, peak in flight "
              f"{run.max_concurrent}, failed {failed}]")
    return 0 if ok_all else 1


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"total {time.perf_counter() - t0:.1f} s")
    sys.exit(rc)
