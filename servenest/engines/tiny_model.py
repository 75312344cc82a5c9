"""Generate a tiny, deterministic Qwen2-architecture model that vLLM can serve.

Usage (run with the ENGINE environment's python, which has torch/transformers/tokenizers):

    python tiny_model.py OUT_DIR [--seed 0] [--force]

The model has random weights (it writes gibberish) but exercises every real serving path:
tokenizer, ChatML chat template, scheduler, KV cache, streaming, usage stats and metrics.

Only the standard library is imported at module level: this file is also imported/inspected by
the orchestrator's own environment, which need not have torch installed.

Output (byte-identical for the same seed and library versions):
    config.json, generation_config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json
The directory is built as OUT_DIR.tmp-<pid> and renamed into place, so a crash never leaves a
half-written model at OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

CORPUS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_corpus.txt")

VOCAB_SIZE = 1000
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2

# Architecture: head_dim must be 64 for vLLM's CPU attention kernels (16 is rejected).
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
MAX_POSITIONS = 2048

# transformers' models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Files we expect to produce; anything else written by the libraries is removed.
EXPECTED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


class GenerationError(Exception):
    pass


def _quiet_libraries() -> None:
    # Must be set before transformers/tokenizers are imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore")


def _read_corpus() -> list[str]:
    try:
        with open(CORPUS_FILE, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise GenerationError(f"cannot read corpus {CORPUS_FILE}: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise GenerationError(f"corpus {CORPUS_FILE} is empty")
    return lines


def _build_tokenizer(out_dir: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Same normalizer / pre-tokenizer / decoder as transformers' Qwen2Tokenizer, which rebuilds
    # the pipeline from vocab+merges on load: training and serving then split text identically.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_read_corpus(), trainer=trainer)

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if any(v is None for v in ids.values()):
        raise GenerationError(f"special tokens missing after training: {ids}")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    # save_jinja_files=False keeps the template inside tokenizer_config.json (legacy layout,
    # understood by every transformers/vLLM version) instead of a separate chat_template.jinja.
    fast.save_pretrained(out_dir, save_jinja_files=False)
    return fast, ids


def _build_model(out_dir: str, seed: int, vocab_size: int, ids: dict) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    model = Qwen2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)

    gen = GenerationConfig(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
    )
    gen.save_pretrained(out_dir)


def _canonicalise(out_dir: str) -> None:
    """Drop stray files and rewrite small JSON files with sorted keys for byte-stable output."""
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name not in EXPECTED_FILES:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    missing = [n for n in EXPECTED_FILES if not os.path.isfile(os.path.join(out_dir, n))]
    if missing:
        raise GenerationError(f"libraries did not write expected files: {missing}")
    for name in EXPECTED_FILES:
        os.chmod(os.path.join(out_dir, name), 0o644)
    # Portable tokenizer_config.json: transformers 5 writes its own backend class and
    # "extra_special_tokens"; the Qwen2 layout below loads in transformers 4.x and 5.x alike.
    tc_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(tc_path, encoding="utf-8") as f:
        tc = json.load(f)
    tc.pop("backend", None)
    tc.pop("extra_special_tokens", None)
    tc["tokenizer_class"] = "Qwen2Tokenizer"
    tc["additional_special_tokens"] = [IM_START, IM_END]
    tc["add_prefix_space"] = False
    tc["errors"] = "replace"
    tc["split_special_tokens"] = False
    with open(tc_path, "w", encoding="utf-8") as f:
        json.dump(tc, f)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        path = os.path.join(out_dir, name)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")


def _check(out_dir: str, ids: dict) -> None:
    with open(os.path.join(out_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    if tc.get("chat_template") != CHAT_TEMPLATE or tc.get("eos_token") != IM_END:
        raise GenerationError("tokenizer_config.json lacks the chat template or eos token")
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg["hidden_size"] // cfg["num_attention_heads"] != 64:
        raise GenerationError("head_dim must be 64 for vLLM's CPU attention")


def generate(out_dir: str, seed: int = 0, force: bool = False) -> str:
    out_dir = os.path.abspath(out_dir)
    occupied = os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir))
    if occupied and not force:
        raise GenerationError(f"{out_dir} already exists and is not empty (use --force)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        _quiet_libraries()
        fast, ids = _build_tokenizer(tmp)
        _build_model(tmp, seed, len(fast), ids)
        _canonicalise(tmp)
        _check(tmp, ids)
        if os.path.exists(out_dir):
            old = f"{out_dir}.old-{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a tiny deterministic Qwen2 model for vLLM.")
    parser.add_argument("out_dir", help="directory to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        path = generate(args.out_dir, seed=args.seed, force=args.force)
    except GenerationError as exc:
        print(f"tiny_model: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"tiny_model: error: missing dependency ({exc}); run with the engine's python",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a clear one-line message, not a traceback
        print(f"tiny_model: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
