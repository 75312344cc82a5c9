"""What to send: vLLM 0.32's ShareGPT, random and custom datasets, request for request.

Each sampler reproduces ``vllm/benchmarks/datasets/datasets.py`` for the same seed and
tokenizer: the same selection, filters, shuffle, oversampling and token counts. The
differences are deliberate and only concern bad input, which is refused here with a
:class:`~servenest.errors.BenchmarkInputError` naming the line or entry before any run
(vLLM would crash mid-sampling, silently use odd values, or send nothing).

ShareGPT (``ShareGPTDataset``)
    keep entries with ``"conversations"`` of at least 2 turns; ``random.seed(seed)`` then
    ``random.shuffle`` (unless ``disable_shuffle``); walk in order, prompt = turn 0,
    completion = turn 1, both counted *with* special tokens; output length = completion
    tokens unless fixed; drop when prompt < 4, output < 4 (only without a fixed length),
    prompt > 1024 or prompt + output > 2048 (``is_valid_sequence``); stop at N; if fewer
    pass, ``random.seed(seed)`` and ``random.choice`` from those that passed until N
    (unless ``no_oversample``).
Random (``RandomDataset``)
    ``np.random.default_rng(seed)``: input lengths from ``[floor(L'(1-r)), ceil(L'(1+r))]``
    with ``L' = input_len - num_special_tokens_to_add()``, output lengths from
    ``[max(1, floor(O(1-r))), max(1, ceil(O(1+r)))]``, vocab offsets; token ids
    ``(offset + i + arange) % len(allowed)`` over the non-special ids, decoded and
    re-encoded (no special tokens) up to 10 times to hit the length; ``prompt_len`` is the
    final count without special tokens.
Custom (``CustomDataset``)
    JSONL rows ``{"prompt": ..., ["output_tokens": ...]}``; shuffle as ShareGPT; the
    prompt goes through the chat template (``add_generation_prompt=True``) unless
    ``skip_chat_template``; ``prompt_len`` counts the sent text with special tokens;
    output length = ``output_len`` (vLLM's ``--custom-output-len``, default 256) or the
    row's ``output_tokens`` when ``output_len`` is None or -1; oversampling as ShareGPT.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from servenest.bench.tokenizer import Tokenizer
from servenest.bench.types import SampleRequest
from servenest.errors import BenchmarkInputError

logger = logging.getLogger(__name__)

# vLLM's is_valid_sequence defaults.
MIN_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048

DEFAULT_CUSTOM_OUTPUT_LEN = 256  # vLLM's --custom-output-len
MAX_DECODE_RETRIES = 10  # gen_prompt_decode_to_target_len's max_retry

# ShareGPT drop reasons, in the order they are reported.
FEWER_THAN_2_TURNS = "fewer than 2 turns"
PROMPT_TOO_SHORT = f"prompt under {MIN_LEN} tokens"
OUTPUT_TOO_SHORT = f"completion under {MIN_LEN} tokens"
PROMPT_TOO_LONG = f"prompt over {MAX_PROMPT_LEN} tokens"
TOTAL_TOO_LONG = f"prompt + output over {MAX_TOTAL_LEN} tokens"


def _check_count(num_requests: Any) -> int:
    if isinstance(num_requests, bool) or not isinstance(num_requests, int | np.integer):
        raise BenchmarkInputError(f"num_requests must be an integer, got {num_requests!r}")
    if num_requests <= 0:
        raise BenchmarkInputError(f"num_requests must be at least 1, got {num_requests}")
    return int(num_requests)


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise BenchmarkInputError(f"{what} file {p} does not exist")
    if not p.is_file():
        raise BenchmarkInputError(f"{what} path {p} is not a file")
    return p


def _drop_reason(prompt_len: int, output_len: int, fixed_output: bool) -> str | None:
    """vLLM's ``is_valid_sequence`` with its defaults, naming the first failed check."""
    if prompt_len < MIN_LEN:
        return PROMPT_TOO_SHORT
    if not fixed_output and output_len < MIN_LEN:
        return OUTPUT_TOO_SHORT
    if prompt_len > MAX_PROMPT_LEN:
        return PROMPT_TOO_LONG
    if prompt_len + output_len > MAX_TOTAL_LEN:
        return TOTAL_TOO_LONG
    return None


def _oversample(
    samples: list[SampleRequest], num_requests: int, seed: int, no_oversample: bool
) -> list[SampleRequest]:
    """``BenchmarkDataset.maybe_oversample_requests``: reseed, then ``random.choice``."""
    if no_oversample or len(samples) >= num_requests:
        return samples
    rng = random.Random(seed)
    needed = num_requests - len(samples)
    extra = [rng.choice(samples) for _ in range(needed)]
    logger.info(
        "%d requests qualified; oversampled %d more to reach %d", len(samples), needed, num_requests
    )
    return samples + extra


# ---- ShareGPT ---------------------------------------------------------------------------


def _load_sharegpt(path: Path) -> list[dict]:
    try:
        with path.open("rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BenchmarkInputError(f"cannot read ShareGPT file {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"ShareGPT file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise BenchmarkInputError(
            f"ShareGPT file {path} must hold a JSON list of conversations "
            f'({{"conversations": [{{"from": ..., "value": ...}}, ...]}}), '
            f"not a {type(data).__name__}"
        )
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BenchmarkInputError(
                f"ShareGPT file {path}: entry {index} is a {type(entry).__name__}, "
                "not an object with 'conversations'"
            )
        if "conversations" not in entry:
            continue
        conversations = entry["conversations"]
        if not isinstance(conversations, list):
            raise BenchmarkInputError(
                f"ShareGPT file {path}: entry {index} ('id' {entry.get('id')!r}): "
                f"'conversations' must be a list, not a {type(conversations).__name__}"
            )
        if len(conversations) < 2:
            continue
        for turn_index in (0, 1):
            turn = conversations[turn_index]
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BenchmarkInputError(
                    f"ShareGPT file {path}: entry {index} ('id' {entry.get('id')!r}), "
                    f"turn {turn_index} must be an object with a string 'value'"
                )
    return data


def sample_sharegpt(
    path: str | Path,
    num_requests: int,
    tokenizer: Tokenizer,
    seed: int = 0,
    fixed_output_len: int | None = None,
    disable_shuffle: bool = False,
    no_oversample: bool = False,
) -> list[SampleRequest]:
    """vLLM's ``ShareGPTDataset(random_seed=seed).sample(tokenizer, num_requests,
    output_len=fixed_output_len)`` (``--sharegpt-output-len``)."""
    num_requests = _check_count(num_requests)
    if fixed_output_len is not None and (
        isinstance(fixed_output_len, bool)
        or not isinstance(fixed_output_len, int | np.integer)
        or fixed_output_len < 1
    ):
        raise BenchmarkInputError(
            f"fixed_output_len must be a positive integer or None, got {fixed_output_len!r}"
        )
    file = _check_file(path, "ShareGPT")
    entries = _load_sharegpt(file)

    data = [e for e in entries if "conversations" in e and len(e["conversations"]) >= 2]
    drops: Counter[str] = Counter({FEWER_THAN_2_TURNS: len(entries) - len(data)})
    # ShareGPTDataset.load_data: random.seed(seed) then random.shuffle on the global RNG.
    rng = random.Random(seed)
    if not disable_shuffle:
        rng.shuffle(data)

    samples: list[SampleRequest] = []
    for entry in data:
        if len(samples) >= num_requests:
            break
        prompt = entry["conversations"][0]["value"]
        completion = entry["conversations"][1]["value"]
        prompt_len = len(tokenizer.encode(prompt))
        completion_len = len(tokenizer.encode(completion))
        output_len = completion_len if fixed_output_len is None else int(fixed_output_len)
        reason = _drop_reason(prompt_len, output_len, fixed_output_len is not None)
        if reason is not None:
            drops[reason] += 1
            continue
        samples.append(SampleRequest(prompt, prompt_len, output_len))

    if not samples:
        reasons = ", ".join(f"{n} {why}" for why, n in drops.items() if n)
        raise BenchmarkInputError(
            f"ShareGPT file {file}: none of its {len(entries)} entries qualifies "
            f"({reasons or 'the file is empty'}); vLLM keeps conversations with at least 2 "
            f"turns, a prompt of {MIN_LEN}..{MAX_PROMPT_LEN} tokens, a completion of at least "
            f"{MIN_LEN} tokens (unless an output length is fixed) and at most "
            f"{MAX_TOTAL_LEN} tokens together"
        )
    if len(samples) < num_requests:
        logger.warning(
            "ShareGPT file %s: only %d of %d entries qualify (dropped: %s)",
            file,
            len(samples),
            len(entries),
            ", ".join(f"{n} {why}" for why, n in drops.items() if n) or "none",
        )
    return _oversample(samples, num_requests, seed, no_oversample)


# ---- random -----------------------------------------------------------------------------


def _range_ratios(range_ratio: float | dict) -> tuple[float, float]:
    if isinstance(range_ratio, dict):
        try:
            pair = float(range_ratio["input"]), float(range_ratio["output"])
        except KeyError:
            raise BenchmarkInputError(
                "range_ratio as a dict needs 'input' and 'output' keys, "
                f"got {sorted(range_ratio)}"
            ) from None
        except (TypeError, ValueError):
            raise BenchmarkInputError(f"range_ratio values must be numbers: {range_ratio!r}") from None
    else:
        try:
            ratio = float(range_ratio)
        except (TypeError, ValueError):
            raise BenchmarkInputError(f"range_ratio must be a number, got {range_ratio!r}") from None
        pair = ratio, ratio
    for name, value in zip(("input", "output"), pair, strict=True):
        if not 0.0 <= value < 1.0:
            raise BenchmarkInputError(f"{name} range_ratio must be in [0, 1), got {value}")
    return pair


def _decode_to_target_len(
    tokenizer: Tokenizer,
    token_sequence: list[int],
    target_token_len: int,
    vocab_size: int,
    rng: np.random.Generator,
) -> tuple[str, list[int], int]:
    """vLLM's ``gen_prompt_decode_to_target_len`` (no special tokens, with the dataset's rng)."""
    remain = MAX_DECODE_RETRIES
    mismatch = 0
    while True:
        prompt = tokenizer.decode(token_sequence)
        token_sequence = tokenizer.encode(prompt, add_special_tokens=False)
        if remain <= 0:
            if len(token_sequence) != target_token_len:
                mismatch = len(token_sequence) - target_token_len
            break
        if len(token_sequence) == target_token_len:
            break
        if len(token_sequence) < target_token_len:
            extra = rng.integers(
                0, vocab_size, size=target_token_len - len(token_sequence)
            ).tolist()
            token_sequence.extend(extra)
        else:
            token_sequence = token_sequence[:target_token_len]
        remain -= 1
    return prompt, token_sequence, mismatch


def _int_param(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise BenchmarkInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sample_random(
    tokenizer: Tokenizer,
    num_requests: int,
    input_len: int = 1024,
    output_len: int = 128,
    range_ratio: float | dict = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
) -> list[SampleRequest]:
    """vLLM's ``RandomDataset(random_seed=seed).sample(...)`` (``--random-input-len``,
    ``--random-output-len``, ``--random-range-ratio``, ``--random-prefix-len``)."""
    num_requests = _check_count(num_requests)
    input_len = _int_param("input_len", input_len, 0)
    output_len = _int_param("output_len", output_len, 0)
    prefix_len = _int_param("prefix_len", prefix_len, 0)
    input_rr, output_rr = _range_ratios(range_ratio)

    num_special = int(tokenizer.num_special_tokens_to_add())
    real_input_len = max(0, input_len - num_special)
    if prefix_len + math.floor(real_input_len * (1.0 - input_rr)) < 1:
        raise BenchmarkInputError(
            f"input_len {input_len} is too small: with {num_special} special tokens and range "
            f"ratio {input_rr}, a prompt could have no tokens; raise input_len or prefix_len, "
            "or lower the range ratio"
        )

    rng = np.random.default_rng(seed)
    # utils.get_sampling_params
    input_low = math.floor(real_input_len * (1 - input_rr))
    input_high = math.ceil(real_input_len * (1 + input_rr))
    output_low = max(math.floor(output_len * (1 - output_rr)), 1)
    output_high = max(math.ceil(output_len * (1 + output_rr)), 1)
    # HF's ``tokenizer.vocab_size``: the base vocabulary, without added tokens.
    vocab_size = tokenizer.base_vocab_size
    input_lens = rng.integers(input_low, input_high + 1, size=num_requests)
    output_lens = rng.integers(output_low, output_high + 1, size=num_requests)
    offsets = rng.integers(0, vocab_size, size=num_requests)

    # Same expression as vLLM: the order of this set's iteration is the token order.
    all_tokens = np.arange(vocab_size)
    allowed_tokens = np.array(list(set(all_tokens) - set(tokenizer.all_special_ids)))
    if len(allowed_tokens) == 0:
        raise BenchmarkInputError(
            f"the tokenizer's base vocabulary ({vocab_size} ids) has no non-special token"
        )

    prefix_token_ids: list[int] = []
    if prefix_len > 0:
        prefix_tokens = allowed_tokens[
            rng.integers(0, len(allowed_tokens), size=prefix_len)
        ].tolist()
        _, prefix_token_ids, mismatch = _decode_to_target_len(
            tokenizer, prefix_tokens, prefix_len, vocab_size, rng
        )
        if mismatch:
            logger.warning("random prefix re-encodes to %+d tokens off target", mismatch)

    requests: list[SampleRequest] = []
    mismatch_total = 0
    for i in range(num_requests):
        n = int(input_lens[i])
        inner = allowed_tokens[
            (int(offsets[i]) + i + np.arange(n)) % len(allowed_tokens)
        ].tolist()
        prompt, adjusted, mismatch = _decode_to_target_len(
            tokenizer, prefix_token_ids + inner, prefix_len + n, vocab_size, rng
        )
        mismatch_total += mismatch
        requests.append(SampleRequest(prompt, len(adjusted), int(output_lens[i])))
    if mismatch_total:
        logger.warning(
            "random prompts re-encode to %+d tokens off target in total (as in vLLM)",
            mismatch_total,
        )
    return requests


# ---- custom -----------------------------------------------------------------------------


def _load_custom(path: Path) -> list[dict]:
    if not path.name.endswith(".jsonl"):
        raise BenchmarkInputError(
            f"custom dataset {path} must be a .jsonl file (one {{\"prompt\": ...}} object per "
            "line), as vLLM's CustomDataset requires"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"cannot read custom dataset {path}: {exc}") from exc
    rows: list[dict] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise BenchmarkInputError(
                f"custom dataset {path}, line {line_no}: not valid JSON ({exc})"
            ) from exc
        if not isinstance(row, dict):
            raise BenchmarkInputError(
                f"custom dataset {path}, line {line_no}: expected an object with 'prompt', "
                f"got a {type(row).__name__}"
            )
        if not isinstance(row.get("prompt"), str):
            raise BenchmarkInputError(
                f"custom dataset {path}, line {line_no}: needs a string 'prompt'"
            )
        row["_line"] = line_no
        rows.append(row)
    if not rows:
        raise BenchmarkInputError(f"custom dataset {path} has no rows")
    return rows


def sample_custom(
    path: str | Path,
    num_requests: int,
    tokenizer: Tokenizer,
    seed: int = 0,
    output_len: int | None = DEFAULT_CUSTOM_OUTPUT_LEN,
    skip_chat_template: bool = False,
    disable_shuffle: bool = False,
    no_oversample: bool = False,
    chat_template_kwargs: dict | None = None,
) -> list[SampleRequest]:
    """vLLM's ``CustomDataset(random_seed=seed).sample(...)`` (``--custom-output-len``,
    ``--skip-chat-template``). vLLM treats ``num_requests <= 0`` as "all rows"; here it
    is refused like everywhere else."""
    num_requests = _check_count(num_requests)
    fixed = output_len is not None and output_len != -1
    if fixed and (
        isinstance(output_len, bool) or not isinstance(output_len, int | np.integer) or output_len < 1
    ):
        raise BenchmarkInputError(
            f"output_len must be a positive integer, or None/-1 to use each row's "
            f"'output_tokens', got {output_len!r}"
        )
    file = _check_file(path, "custom dataset")
    rows = _load_custom(file)
    if not fixed:
        for row in rows:
            value = row.get("output_tokens")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchmarkInputError(
                    f"custom dataset {file}, line {row['_line']}: with no fixed output length "
                    f"every row needs a positive integer 'output_tokens', got {value!r}"
                )
    if not skip_chat_template and not tokenizer.chat_template:
        raise BenchmarkInputError(
            f"custom dataset {file}: the tokenizer has no chat template; "
            "set skip_chat_template to send the prompts as they are"
        )

    rng = random.Random(seed)
    if not disable_shuffle:
        rng.shuffle(rows)

    samples: list[SampleRequest] = []
    for row in rows:
        if len(samples) >= num_requests:
            break
        prompt = row["prompt"]
        new_output_len = int(output_len) if fixed else int(row["output_tokens"])
        if not skip_chat_template:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                **(chat_template_kwargs or {}),
            )
        samples.append(SampleRequest(prompt, len(tokenizer.encode(prompt)), new_output_len))
    return _oversample(samples, num_requests, seed, no_oversample)
