"""Parity with vLLM 0.32's own benchmark code: same seed, same requests, same schedule.

vLLM's ``vllm.benchmarks.datasets`` and ``serve.get_request`` run in the engine
environment (with transformers' AutoTokenizer on the built-in tiny model); ServeNest's
samplers run here with the ``tokenizers``-only wrapper. Every prompt, prompt length,
output length and send offset must agree.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from servenest.bench.datasets import sample_custom, sample_random, sample_sharegpt
from servenest.bench.schedule import arrival_offsets
from servenest.bench.tokenizer import load_tokenizer
from servenest.topology.local import TINY_MODEL_SCRIPT

pytestmark = pytest.mark.engine

CORPUS = Path(TINY_MODEL_SCRIPT).parent / "tiny_corpus.txt"

SHAREGPT_CASES = [
    {"seed": 0, "n": 50, "fixed_output_len": None, "disable_shuffle": False, "no_oversample": False},
    {"seed": 7, "n": 50, "fixed_output_len": None, "disable_shuffle": False, "no_oversample": False},
    # more than qualify: oversampled with random.choice
    {"seed": 0, "n": 400, "fixed_output_len": None, "disable_shuffle": False, "no_oversample": False},
    {"seed": 7, "n": 400, "fixed_output_len": None, "disable_shuffle": False, "no_oversample": True},
    {"seed": 0, "n": 30, "fixed_output_len": 64, "disable_shuffle": False, "no_oversample": False},
    {"seed": 3, "n": 40, "fixed_output_len": None, "disable_shuffle": True, "no_oversample": False},
]
RANDOM_CASES = [
    {"seed": 0, "n": 20, "input_len": 64, "output_len": 16, "range_ratio": 0.0, "prefix_len": 0},
    {"seed": 7, "n": 20, "input_len": 128, "output_len": 32, "range_ratio": 0.5, "prefix_len": 8},
    {"seed": 0, "n": 8, "input_len": 1024, "output_len": 128, "range_ratio": 0.25, "prefix_len": 0},
]
CUSTOM_CASES = [
    {"seed": 0, "n": 20, "output_len": 256, "skip_chat_template": False},
    {"seed": 7, "n": 50, "output_len": None, "skip_chat_template": False},  # oversampled
    {"seed": 0, "n": 10, "output_len": 32, "skip_chat_template": True},
]
DELAY_CASES = [
    {"seed": seed, "n": 50, "rate": 10.0, "burstiness": burstiness}
    for seed in (0, 7)
    for burstiness in (1.0, 0.5, "inf")
] + [{"seed": 0, "n": 50, "rate": "inf", "burstiness": 1.0}]

VLLM_SCRIPT = r'''
import asyncio, json, sys
import numpy as np
from transformers import AutoTokenizer
from vllm.benchmarks.datasets import CustomDataset, RandomDataset, ShareGPTDataset
import vllm.benchmarks.serve as serve

# The engine environment has no pandas, so vLLM's CustomDataset (pd.read_json(lines=True),
# then iterrows/to_dict) cannot load JSONL there as installed; a stand-in gives it the rows.
import vllm.benchmarks.datasets.datasets as vllm_datasets

class _Row(dict):
    def to_dict(self):
        return dict(self)

class _Frame:
    def __init__(self, rows):
        self.rows = rows
        self.columns = list(dict.fromkeys(k for r in rows for k in r))

    def iterrows(self):
        for i, r in enumerate(self.rows):
            yield i, _Row({c: r.get(c, float("nan")) for c in self.columns})

class _PandasStandIn:
    @staticmethod
    def read_json(path_or_buf, lines):
        assert lines
        with open(path_or_buf, encoding="utf-8") as f:
            return _Frame([json.loads(line) for line in f if line.strip()])

vllm_datasets.pd = _PandasStandIn

cfg = json.load(open(sys.argv[1]))
tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
out = {"sharegpt": [], "random": [], "custom": [], "delays": []}

def rows(reqs):
    return [[r.prompt, r.prompt_len, r.expected_output_len] for r in reqs]

for c in cfg["sharegpt"]:
    ds = ShareGPTDataset(random_seed=c["seed"], dataset_path=cfg["sharegpt_path"],
                         disable_shuffle=c["disable_shuffle"])
    out["sharegpt"].append(rows(ds.sample(tokenizer=tok, num_requests=c["n"],
                                          output_len=c["fixed_output_len"],
                                          no_oversample=c["no_oversample"])))
for c in cfg["random"]:
    ds = RandomDataset(random_seed=c["seed"])
    out["random"].append(rows(ds.sample(tokenizer=tok, num_requests=c["n"],
                                        input_len=c["input_len"], output_len=c["output_len"],
                                        range_ratio=c["range_ratio"], prefix_len=c["prefix_len"])))
for c in cfg["custom"]:
    ds = CustomDataset(random_seed=c["seed"], dataset_path=cfg["custom_path"])
    out["custom"].append(rows(ds.sample(tokenizer=tok, num_requests=c["n"],
                                        output_len=c["output_len"],
                                        skip_chat_template=c["skip_chat_template"])))

# get_request against a frozen clock: request i then sleeps exactly start + delay_ts[i] - now
# = delay_ts[i] seconds (or not at all when delay_ts[i] == 0).
class FrozenClock:
    @staticmethod
    def time():
        return 0.0

slept = []

async def fake_sleep(seconds, *args, **kwargs):
    slept.append(seconds)

serve.time = FrozenClock
serve.asyncio.sleep = fake_sleep

async def schedule(n, rate, burstiness):
    offsets, seen = [], 0
    async for _request, _rate in serve.get_request([None] * n, rate, burstiness):
        offsets.append(slept[-1] if len(slept) > seen else 0.0)
        seen = len(slept)
    return offsets

for c in cfg["delays"]:
    slept.clear()
    np.random.seed(c["seed"])  # what serve.main_async does before sampling and sending
    out["delays"].append(asyncio.run(schedule(c["n"], float(c["rate"]), float(c["burstiness"]))))
print("@@JSON@@" + json.dumps(out))
'''


def _words() -> list[str]:
    words = CORPUS.read_text(encoding="utf-8").split()
    return words + ["你好", "世界", "模型", "服务", "🚀", "naïve", "café", "12345", "?!"]


def _text(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def _write_sharegpt(path: Path) -> None:
    rng, words = random.Random(20260516), _words()
    entries = []
    for i in range(200):
        kind = i % 10
        if kind == 0:  # one turn only
            conv = [{"from": "human", "value": _text(rng, words, rng.randint(5, 40))}]
        elif kind == 1:  # prompt under 4 tokens
            conv = [{"from": "human", "value": rng.choice(["hi", "", "ok", words[i % 50]])},
                    {"from": "gpt", "value": _text(rng, words, rng.randint(5, 60))}]
        elif kind == 2:  # completion under 4 tokens
            conv = [{"from": "human", "value": _text(rng, words, rng.randint(5, 60))},
                    {"from": "gpt", "value": rng.choice(["no", "", "yes."])}]
        elif kind == 3:  # prompt over 1024 tokens
            conv = [{"from": "human", "value": _text(rng, words, rng.randint(1100, 1500))},
                    {"from": "gpt", "value": _text(rng, words, rng.randint(5, 60))}]
        elif kind == 4:  # prompt + completion over 2048 tokens
            conv = [{"from": "human", "value": _text(rng, words, rng.randint(700, 900))},
                    {"from": "gpt", "value": _text(rng, words, rng.randint(1400, 1700))}]
        else:  # ordinary, sometimes with more turns
            conv = [{"from": "human", "value": _text(rng, words, rng.randint(3, 300))},
                    {"from": "gpt", "value": _text(rng, words, rng.randint(3, 400))}]
            if kind == 9:
                conv.append({"from": "human", "value": _text(rng, words, 10)})
        entries.append({"id": f"c{i}", "conversations": conv})
    entries.append({"id": "no-conversations"})
    entries.append({"id": "empty", "conversations": []})
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def _write_custom(path: Path) -> None:
    rng, words = random.Random(99), _words()
    lines = [
        json.dumps({"prompt": _text(rng, words, rng.randint(1, 80)),
                    "output_tokens": rng.randint(1, 300)}, ensure_ascii=False)
        for _ in range(30)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def parity(engine_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-parity")
    model_dir = root / "tiny"
    subprocess.run([engine_python, str(TINY_MODEL_SCRIPT), str(model_dir)],
                   check=True, capture_output=True, timeout=300)
    _write_sharegpt(root / "sharegpt.json")
    _write_custom(root / "custom.jsonl")
    cfg = {
        "model_dir": str(model_dir),
        "sharegpt_path": str(root / "sharegpt.json"),
        "custom_path": str(root / "custom.jsonl"),
        "sharegpt": SHAREGPT_CASES,
        "random": RANDOM_CASES,
        "custom": CUSTOM_CASES,
        "delays": DELAY_CASES,
    }
    (root / "cfg.json").write_text(json.dumps(cfg))
    (root / "vllm_ref.py").write_text(VLLM_SCRIPT)
    proc = subprocess.run([engine_python, str(root / "vllm_ref.py"), str(root / "cfg.json")],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "ERROR"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@JSON@@")]
    assert marker, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = json.loads(marker[-1].removeprefix("@@JSON@@"))
    return cfg, expected, load_tokenizer(model_dir)


def _rows(requests) -> list[list]:
    return [[r.prompt, r.prompt_len, r.expected_output_len] for r in requests]


@pytest.mark.parametrize("index", range(len(SHAREGPT_CASES)))
def test_sharegpt_matches_vllm(parity, index):
    cfg, expected, tokenizer = parity
    c = SHAREGPT_CASES[index]
    ours = sample_sharegpt(cfg["sharegpt_path"], c["n"], tokenizer, seed=c["seed"],
                           fixed_output_len=c["fixed_output_len"],
                           disable_shuffle=c["disable_shuffle"], no_oversample=c["no_oversample"])
    assert _rows(ours) == expected["sharegpt"][index]


def test_sharegpt_cases_exercise_filters_and_oversampling(parity):
    cfg, expected, _ = parity
    entries = json.loads(Path(cfg["sharegpt_path"]).read_text(encoding="utf-8"))
    oversampled, not_oversampled = expected["sharegpt"][2], expected["sharegpt"][3]
    qualified = len(not_oversampled)
    assert 50 < qualified < 400 < len(entries) + 200, "the file should leave a filtered subset"
    assert len(oversampled) == 400 and len({r[0] for r in oversampled}) == qualified


@pytest.mark.parametrize("index", range(len(RANDOM_CASES)))
def test_random_matches_vllm(parity, index):
    _, expected, tokenizer = parity
    c = RANDOM_CASES[index]
    ours = sample_random(tokenizer, c["n"], input_len=c["input_len"], output_len=c["output_len"],
                         range_ratio=c["range_ratio"], prefix_len=c["prefix_len"], seed=c["seed"])
    assert _rows(ours) == expected["random"][index]


@pytest.mark.parametrize("index", range(len(CUSTOM_CASES)))
def test_custom_matches_vllm(parity, index):
    cfg, expected, tokenizer = parity
    c = CUSTOM_CASES[index]
    ours = sample_custom(cfg["custom_path"], c["n"], tokenizer, seed=c["seed"],
                         output_len=c["output_len"], skip_chat_template=c["skip_chat_template"])
    assert _rows(ours) == expected["custom"][index]


@pytest.mark.parametrize("index", range(len(DELAY_CASES)))
def test_arrival_schedule_matches_vllm(parity, index):
    _, expected, _ = parity
    c = DELAY_CASES[index]
    ours = arrival_offsets(c["n"], float(c["rate"]), float(c["burstiness"]), seed=c["seed"])
    theirs = np.asarray(expected["delays"][index], dtype=np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_vllm_schedule_reference_is_not_trivial(parity):
    _, expected, _ = parity
    for case, delays in zip(DELAY_CASES, expected["delays"], strict=True):
        if case["rate"] == "inf":
            assert delays == [0.0] * case["n"]
        else:  # the first request waits its own gap; the last lands at N / rate
            assert delays[0] > 0 and delays[-1] == pytest.approx(case["n"] / case["rate"])
