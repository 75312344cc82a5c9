"""Dataset samplers: vLLM 0.32's selection, filters, shuffle, oversampling and lengths.

A word-level tokenizer (see test_bench_tokenizer.make_tokenizer_dir) makes counts exact:
k words encode to k + 1 tokens with the BOS the tokenizer adds, as vLLM counts them.
"""

from __future__ import annotations

import json
import random

import pytest

from servenest.bench.datasets import sample_custom, sample_random, sample_sharegpt
from servenest.bench.tokenizer import load_tokenizer
from servenest.bench.types import SampleRequest
from servenest.errors import BenchmarkInputError
from tests.unit.test_bench_tokenizer import make_tokenizer_dir


def words(k: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 200}" for i in range(k))


def conv(prompt: str, completion: str | None = None, *more: str) -> list[dict]:
    turns = [{"from": "human", "value": prompt}]
    if completion is not None:
        turns.append({"from": "gpt", "value": completion})
    turns += [{"from": "human", "value": m} for m in more]
    return turns


# id -> (conversations, kept?) ; token counts include the BOS.
ENTRIES = [
    ("one-turn", conv(words(10)), False),
    ("short-prompt", conv(words(2), words(10)), False),  # 3 tokens < 4
    ("edge-prompt", conv(words(3), words(3)), True),  # 4 and 4: both at the minimum
    ("short-output", conv(words(10), words(2)), False),  # completion 3 tokens
    ("long-prompt", conv(words(1024), words(10)), False),  # 1025 > 1024
    ("edge-long", conv(words(1023), words(1023)), True),  # 1024 + 1024 = 2048
    ("too-long-total", conv(words(1000), words(1047)), False),  # 1001 + 1048 = 2049
    *[(f"ok-{i}", conv(words(i + 5, i), words(2 * i + 4, 50 + i)), True) for i in range(10)],
    ("three-turns", conv(words(6), words(7), words(8)), True),
]
QUALIFIED = [name for name, _, kept in ENTRIES if kept]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(make_tokenizer_dir(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def sharegpt(tmp_path):
    data = [{"id": name, "conversations": c} for name, c, _ in ENTRIES]
    data.insert(3, {"id": "no-conversations"})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return path


def by_prompt():
    return {c[0]["value"]: name for name, c, _ in ENTRIES if len(c) >= 2}


def names(requests: list[SampleRequest]) -> list[str]:
    lookup = by_prompt()
    return [lookup[r.prompt] for r in requests]


def vllm_order(seed: int) -> list[str]:
    """ShareGPTDataset.load_data: keep >= 2 turns, random.seed(seed), random.shuffle."""
    data = [name for name, c, _ in ENTRIES if len(c) >= 2]
    random.seed(seed)
    random.shuffle(data)
    return [n for n in data if n in QUALIFIED]


# ---- ShareGPT -----------------------------------------------------------------------------


def test_sharegpt_filters_like_is_valid_sequence(sharegpt, tok):
    got = sample_sharegpt(sharegpt, 100, tok, no_oversample=True)
    assert sorted(names(got)) == sorted(QUALIFIED)
    lens = {n: (r.prompt_len, r.expected_output_len) for n, r in zip(names(got), got, strict=True)}
    assert lens["edge-prompt"] == (4, 4)
    assert lens["edge-long"] == (1024, 1024)
    assert lens["three-turns"] == (7, 8)
    assert lens["ok-3"] == (9, 11)


def test_sharegpt_shuffles_with_python_random_seed(sharegpt, tok):
    for seed in (0, 7):
        got = sample_sharegpt(sharegpt, len(QUALIFIED), tok, seed=seed)
        assert names(got) == vllm_order(seed)
        assert got == sample_sharegpt(sharegpt, len(QUALIFIED), tok, seed=seed)
    assert vllm_order(0) != vllm_order(7)


def test_sharegpt_disable_shuffle_keeps_file_order(sharegpt, tok):
    got = sample_sharegpt(sharegpt, len(QUALIFIED), tok, seed=5, disable_shuffle=True)
    assert names(got) == QUALIFIED


def test_sharegpt_stops_at_num_requests(sharegpt, tok):
    got = sample_sharegpt(sharegpt, 5, tok, seed=0)
    assert names(got) == vllm_order(0)[:5]


def test_sharegpt_oversamples_with_seeded_choice(sharegpt, tok):
    got = sample_sharegpt(sharegpt, 40, tok, seed=7)
    assert len(got) == 40
    first = got[: len(QUALIFIED)]
    assert names(first) == vllm_order(7)
    random.seed(7)  # maybe_oversample_requests reseeds, then random.choice from what passed
    assert got[len(QUALIFIED):] == [random.choice(first) for _ in range(40 - len(QUALIFIED))]


def test_sharegpt_no_oversample_returns_what_qualifies(sharegpt, tok):
    assert len(sample_sharegpt(sharegpt, 40, tok, no_oversample=True)) == len(QUALIFIED)


def test_sharegpt_fixed_output_len_skips_the_output_minimum(sharegpt, tok):
    got = sample_sharegpt(sharegpt, 100, tok, fixed_output_len=50, no_oversample=True)
    assert "short-output" in names(got)
    assert "short-prompt" not in names(got)
    assert {r.expected_output_len for r in got} == {50}
    # edge-long now totals 1024 + 50; too-long-total 1001 + 50: both pass
    assert {"edge-long", "too-long-total"} <= set(names(got))


def test_sharegpt_counts_prompts_with_special_tokens(sharegpt, tok):
    for r in sample_sharegpt(sharegpt, 100, tok, no_oversample=True):
        assert r.prompt_len == len(tok.encode(r.prompt)) == len(r.prompt.split()) + 1


def _write(tmp_path, content, name="data.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ("{oops", "is not valid JSON"),
        ({"conversations": []}, "must hold a JSON list"),
        ([{"id": "a", "conversations": conv("x y z w", "a b c d")}, "text"],
         "entry 1 is a str"),
        ([{"id": "a", "conversations": "hello"}], r"entry 0 \('id' 'a'\): 'conversations' must be a list"),
        ([{"id": "b", "conversations": [{"from": "human"}, {"value": "x"}]}],
         r"entry 0 \('id' 'b'\), turn 0 must be an object with a string 'value'"),
        ([{"id": "c", "conversations": [{"value": "x"}, {"value": 3}]}], "turn 1"),
    ],
)
def test_sharegpt_malformed_files(tmp_path, tok, content, message):
    with pytest.raises(BenchmarkInputError, match=message):
        sample_sharegpt(_write(tmp_path, content), 10, tok)


def test_sharegpt_missing_file(tmp_path, tok):
    with pytest.raises(BenchmarkInputError, match="does not exist"):
        sample_sharegpt(tmp_path / "nope.json", 10, tok)
    with pytest.raises(BenchmarkInputError, match="is not a file"):
        sample_sharegpt(tmp_path, 10, tok)


def test_sharegpt_that_filters_to_nothing_says_why(tmp_path, tok):
    data = [{"id": n, "conversations": c} for n, c, kept in ENTRIES if not kept]
    data.append({"id": "x"})
    with pytest.raises(BenchmarkInputError) as err:
        sample_sharegpt(_write(tmp_path, data), 10, tok)
    text = str(err.value)
    assert "none of its 6 entries qualifies" in text
    for reason in ("2 fewer than 2 turns", "1 prompt under 4 tokens", "1 completion under 4 tokens",
                   "1 prompt over 1024 tokens", "1 prompt + output over 2048 tokens"):
        assert reason in text
    with pytest.raises(BenchmarkInputError, match="none of its 0 entries.*empty"):
        sample_sharegpt(_write(tmp_path, []), 10, tok)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_sharegpt_bad_num_requests(sharegpt, tok, n):
    with pytest.raises(BenchmarkInputError, match="num_requests"):
        sample_sharegpt(sharegpt, n, tok)


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_sharegpt_bad_fixed_output_len(sharegpt, tok, value):
    with pytest.raises(BenchmarkInputError, match="fixed_output_len"):
        sample_sharegpt(sharegpt, 5, tok, fixed_output_len=value)


# ---- random -------------------------------------------------------------------------------


def test_random_lengths_within_range_ratio(tok):
    got = sample_random(tok, 300, input_len=20, output_len=10, range_ratio=0.5, seed=0)
    assert len(got) == 300
    # input_len minus the 1 special token the tokenizer adds: 19 -> [floor(9.5), ceil(28.5)]
    assert all(9 <= r.prompt_len <= 29 for r in got)
    assert all(5 <= r.expected_output_len <= 15 for r in got)
    assert {r.prompt_len for r in got} >= {9, 29}  # both ends reachable
    for r in got:
        assert r.prompt_len == len(tok.encode(r.prompt, add_special_tokens=False))


def test_random_zero_ratio_is_exact(tok):
    got = sample_random(tok, 20, input_len=64, output_len=7, seed=3)
    assert {(r.prompt_len, r.expected_output_len) for r in got} == {(63, 7)}


def test_random_never_uses_special_tokens(tok):
    special = set(tok.all_special_ids)
    for r in sample_random(tok, 50, input_len=40, output_len=4, range_ratio=0.3, seed=1):
        assert not special & set(tok.encode(r.prompt, add_special_tokens=False))


def test_random_prefix_is_shared(tok):
    got = sample_random(tok, 10, input_len=11, output_len=4, prefix_len=5, seed=2)
    prefixes = {tuple(r.prompt.split()[:5]) for r in got}
    assert len(prefixes) == 1
    assert {r.prompt_len for r in got} == {5 + 10}


def test_random_is_deterministic_per_seed(tok):
    a = sample_random(tok, 30, input_len=32, output_len=8, range_ratio=0.25, seed=11)
    assert a == sample_random(tok, 30, input_len=32, output_len=8, range_ratio=0.25, seed=11)
    assert a != sample_random(tok, 30, input_len=32, output_len=8, range_ratio=0.25, seed=12)


def test_random_separate_input_and_output_ratios(tok):
    got = sample_random(tok, 100, input_len=21, output_len=10,
                        range_ratio={"input": 0.0, "output": 0.5}, seed=0)
    assert {r.prompt_len for r in got} == {20}
    assert len({r.expected_output_len for r in got}) > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"range_ratio": 1.0}, r"range_ratio must be in \[0, 1\)"),
        ({"range_ratio": -0.1}, r"range_ratio must be in \[0, 1\)"),
        ({"range_ratio": {"input": 0.1}}, "'input' and 'output' keys"),
        ({"range_ratio": "wide"}, "range_ratio must be a number"),
        ({"input_len": 1}, "input_len 1 is too small"),
        ({"input_len": -4}, "input_len must be an integer"),
        ({"output_len": 2.5}, "output_len must be an integer"),
        ({"num_requests": 0}, "num_requests must be at least 1"),
    ],
)
def test_random_bad_parameters(tok, kwargs, message):
    args = {"num_requests": 5, "input_len": 16, "output_len": 4, **kwargs}
    with pytest.raises(BenchmarkInputError, match=message):
        sample_random(tok, **args)


# ---- custom -------------------------------------------------------------------------------


def _jsonl(tmp_path, rows, name="prompts.jsonl"):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    return _write(tmp_path, "\n".join(lines) + "\n", name)


CUSTOM_ROWS = [{"prompt": words(i + 1, i), "output_tokens": 10 + i} for i in range(6)]


def test_custom_applies_the_chat_template_and_counts_it(tmp_path, tok):
    path = _jsonl(tmp_path, CUSTOM_ROWS)
    got = sample_custom(path, 6, tok, disable_shuffle=True)
    assert got[0].prompt == "<s><|user|>w0</s><|assistant|>"
    assert [r.expected_output_len for r in got] == [256] * 6  # --custom-output-len default
    for r in got:
        assert r.prompt_len == len(tok.encode(r.prompt))


def test_custom_output_tokens_from_rows_and_skip_template(tmp_path, tok):
    path = _jsonl(tmp_path, CUSTOM_ROWS)
    for output_len in (None, -1):
        got = sample_custom(path, 6, tok, output_len=output_len, disable_shuffle=True,
                            skip_chat_template=True)
        assert [(r.prompt, r.expected_output_len) for r in got] == [
            (row["prompt"], row["output_tokens"]) for row in CUSTOM_ROWS
        ]
        assert [r.prompt_len for r in got] == [i + 2 for i in range(6)]


def test_custom_shuffles_and_oversamples_like_vllm(tmp_path, tok):
    path = _jsonl(tmp_path, CUSTOM_ROWS)
    got = sample_custom(path, 10, tok, seed=4, output_len=8, skip_chat_template=True)
    order = list(CUSTOM_ROWS)
    rng = random.Random(4)
    rng.shuffle(order)
    assert [r.prompt for r in got[:6]] == [row["prompt"] for row in order]
    rng = random.Random(4)
    assert got[6:] == [rng.choice(got[:6]) for _ in range(4)]
    assert len(sample_custom(path, 10, tok, output_len=8, no_oversample=True)) == 6


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        (['{"prompt": "w1"}', "{broken"], {}, "line 2: not valid JSON"),
        (['["w1"]'], {}, "line 1: expected an object"),
        (['{"prompt": "w1"}', '{"text": "w2"}'], {}, "line 2: needs a string 'prompt'"),
        (['{"prompt": 5}'], {}, "line 1: needs a string 'prompt'"),
        (['{"prompt": "w1", "output_tokens": 3}', '{"prompt": "w2"}'], {"output_len": None},
         "line 2: with no fixed output length"),
        ([""], {}, "has no rows"),
        (['{"prompt": "w1"}'], {"output_len": 0}, "output_len must be a positive integer"),
        (['{"prompt": "w1"}'], {"num_requests": -1}, "num_requests must be at least 1"),
    ],
)
def test_custom_bad_input(tmp_path, tok, rows, kwargs, message):
    args = {"num_requests": 3, **kwargs}
    with pytest.raises(BenchmarkInputError, match=message):
        sample_custom(_jsonl(tmp_path, rows), tokenizer=tok, **args)


def test_custom_needs_jsonl_an_existing_file_and_a_template(tmp_path, tok):
    with pytest.raises(BenchmarkInputError, match="does not exist"):
        sample_custom(tmp_path / "none.jsonl", 3, tok)
    with pytest.raises(BenchmarkInputError, match="must be a .jsonl file"):
        sample_custom(_jsonl(tmp_path, CUSTOM_ROWS, name="rows.json"), 3, tok)
    bare = load_tokenizer(make_tokenizer_dir(tmp_path / "bare", chat_template=None))
    path = _jsonl(tmp_path, CUSTOM_ROWS)
    with pytest.raises(BenchmarkInputError, match="no chat template"):
        sample_custom(path, 3, bare)
    assert len(sample_custom(path, 3, bare, skip_chat_template=True)) == 3
