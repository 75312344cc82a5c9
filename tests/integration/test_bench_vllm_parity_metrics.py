"""Our metrics equal vLLM's own ``calculate_metrics`` (run in the engine's environment) on
the same request outcomes, to the last digit."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from servenest.bench.metrics import calculate_metrics
from servenest.bench.types import LoadRun, RequestResult, SampleRequest

pytestmark = pytest.mark.engine

VLLM_SIDE = r"""
import json, sys
from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
from vllm.benchmarks.serve import calculate_metrics
data = json.load(sys.stdin)
outputs = [RequestFuncOutput(**o) for o in data["outputs"]]
m, lens = calculate_metrics(input_requests=None, outputs=outputs, dur_s=data["dur"], tokenizer=None,
                            selected_percentiles=data["percentiles"], goodput_config_dict=data["goodput"])
out = {"lens": lens}
for k, v in vars(m).items():
    out[k] = [list(x) for x in v] if k.startswith("percentiles_") else v
print("VLLM " + json.dumps(out))
"""


def synthetic(n: int = 60, seed: int = 3) -> tuple[list[SampleRequest], LoadRun]:
    rng = random.Random(seed)
    results = []
    for i in range(n):
        ok = rng.random() > 0.1
        out = rng.choice([1, 2, 5, 17, 64]) if ok else 0
        ttft = rng.uniform(0.005, 0.4)
        itl = [rng.uniform(0.001, 0.05) for _ in range(max(out - 1, 0))]
        results.append(RequestResult(
            index=i, prompt_len=rng.randint(4, 900), success=ok, output_tokens=out, ttft=ttft if ok else 0.0,
            itl=itl, latency=ttft + sum(itl) if ok else 0.0, sent_s=i * 0.05, error="" if ok else "HTTP 500",
        ))
    requests = [SampleRequest("p", r.prompt_len, 64) for r in results]
    return requests, LoadRun(results, duration_s=7.3, client_cpu_s=0.2)


def test_metrics_equal_vllms(engine_python):
    requests, run = synthetic()
    percentiles = [50.0, 90.0, 99.0, 99.9]
    goodput = {"ttft": 200.0, "tpot": 20.0, "e2el": 900.0}
    payload = {
        "dur": run.duration_s, "percentiles": percentiles, "goodput": goodput,
        "outputs": [{"success": r.success, "latency": r.latency, "output_tokens": r.output_tokens,
                     "ttft": r.ttft, "itl": r.itl, "prompt_len": r.prompt_len, "error": r.error,
                     "start_time": r.sent_s} for r in run.results],
    }
    out = subprocess.run([engine_python, "-c", VLLM_SIDE], input=json.dumps(payload), capture_output=True,
                         text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("VLLM ")]
    assert line, out.stderr[-3000:]
    v = json.loads(line[0][5:])
    m = calculate_metrics(requests, run, percentiles, goodput)
    assert m.output_lens == v["lens"]
    for key in ("completed", "failed", "total_input", "total_output", "max_concurrent_requests"):
        assert getattr(m, key) == v[key], key
    for key in ("request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                "max_output_tokens_per_s"):
        assert getattr(m, key) == pytest.approx(v[key], rel=1e-12), key
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert m.stats[name][stat] == pytest.approx(v[f"{stat}_{name}_ms"], rel=1e-12), (name, stat)
        ours = [(p, pytest.approx(x, rel=1e-12)) for p, x in m.stats[name]["percentiles"]]
        assert [tuple(x) for x in v[f"percentiles_{name}_ms"]] == ours, name
