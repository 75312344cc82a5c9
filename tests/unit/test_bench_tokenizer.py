"""The tokenizers-only wrapper: HF fast-tokenizer semantics from tokenizer.json + config.

The engine-side parity test compares it with transformers on the real tiny model; these
build small tokenizers in the test with the ``tokenizers`` library (no engine, fast).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from servenest.bench.tokenizer import load_tokenizer
from servenest.errors import BenchmarkInputError, ServeNestError

UNK, BOS, EOS = "[UNK]", "<s>", "</s>"
WORDS = [f"w{i}" for i in range(200)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer_dir(
    path: Path, *, bos: bool = True, chat_template: str | None = CHAT_TEMPLATE, extra: bool = True
) -> Path:
    """A word-level tokenizer: ids 0-2 are [UNK], <s>, </s>; "w0".."w199" are ids 3..202;
    "<extra>" (config-only additional special token) lands at 203, past the base vocab.
    With ``bos`` every encoded text starts with <s>, so a text of k words counts k + 1."""
    vocab = {UNK: 0, BOS: 1, EOS: 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS)])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, 1)]
        )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "unk_token": UNK, "add_bos_token": False}
    if extra:
        config["additional_special_tokens"] = ["<extra>"]
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def tok_dir(tmp_path):
    return make_tokenizer_dir(tmp_path / "model")


def test_encode_counts_special_tokens_like_hf(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.encode("w0 w1 w2") == [1, 3, 4, 5]
    assert tok.encode("w0 w1 w2", add_special_tokens=False) == [3, 4, 5]
    assert tok("w5") == [1, 8]
    assert tok.encode("") == [1]
    assert tok.encode("nope w0") == [1, 0, 3]  # unknown word -> [UNK]
    assert tok.num_special_tokens_to_add() == 1


def test_special_token_text_is_one_token(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.encode("w0 </s> <extra> w1", add_special_tokens=False) == [3, 2, 203, 4]


def test_decode_keeps_special_tokens_by_default(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.decode([1, 3, 4, 2]) == "<s> w0 w1 </s>"
    assert tok.decode([1, 3, 4, 2], skip_special_tokens=True) == "w0 w1"
    ids = tok.encode("w7 w8 w9", add_special_tokens=False)
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids


def test_vocab_sizes_and_special_ids(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.base_vocab_size == 203  # HF's tokenizer.vocab_size: no added tokens
    assert tok.vocab_size == len(tok) == 204  # HF's len(tokenizer): with "<extra>"
    assert tok.all_special_tokens == [BOS, EOS, UNK, "<extra>"]
    assert tok.all_special_ids == [1, 2, 0, 203]
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_config_add_bos_token_is_ignored_with_tokenizer_json(tmp_path):
    # transformers 5 drops add_bos_token/add_eos_token when tokenizer.json exists.
    d = make_tokenizer_dir(tmp_path / "m", bos=False)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.encode("w0") == [3]
    assert tok.num_special_tokens_to_add() == 0


def test_loads_from_the_tokenizer_json_path_and_without_config(tmp_path):
    d = make_tokenizer_dir(tmp_path / "m")
    assert load_tokenizer(d / "tokenizer.json").encode("w1") == [1, 4]
    (d / "tokenizer_config.json").unlink()
    bare = load_tokenizer(d)
    assert bare.encode("w1") == [1, 4]
    assert bare.all_special_ids == [] and bare.chat_template is None


def test_truncation_and_padding_in_the_file_are_ignored(tmp_path):
    d = make_tokenizer_dir(tmp_path / "m")
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    raw.enable_truncation(max_length=3)
    raw.enable_padding(length=10)
    raw.save(str(d / "tokenizer.json"))
    assert load_tokenizer(d).encode("w0 w1 w2 w3 w4") == [1, 3, 4, 5, 6, 7]


def test_chat_template_renders_with_special_tokens(tok_dir):
    tok = load_tokenizer(tok_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "w1 w2"}], add_generation_prompt=True)
    assert text == "<s><|user|>w1 w2</s><|assistant|>"


def test_chat_template_file_wins_over_config(tok_dir):
    (tok_dir / "chat_template.jinja").write_text("[{{ messages[0]['content'] }}]")
    tok = load_tokenizer(tok_dir)
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}]) == "[hey]"


def test_missing_chat_template_is_a_clear_error(tmp_path):
    tok = load_tokenizer(make_tokenizer_dir(tmp_path / "m", chat_template=None))
    with pytest.raises(BenchmarkInputError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_directory_without_tokenizer_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BenchmarkInputError, match="no tokenizer.json") as err:
        load_tokenizer(tmp_path)
    assert isinstance(err.value, ServeNestError)
    with pytest.raises(BenchmarkInputError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_broken_files_are_clear_errors(tmp_path):
    d = make_tokenizer_dir(tmp_path / "m")
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(BenchmarkInputError, match="tokenizer_config.json is not valid JSON"):
        load_tokenizer(d)
    (d / "tokenizer_config.json").write_text("[]")
    with pytest.raises(BenchmarkInputError, match="JSON object"):
        load_tokenizer(d)
    (d / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(BenchmarkInputError, match="not a usable tokenizer.json"):
        load_tokenizer(d)
