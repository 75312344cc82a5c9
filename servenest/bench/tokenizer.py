"""The model's tokenizer, as vLLM's benchmark sees it, without transformers.

vLLM counts prompt tokens with the Hugging Face *fast* tokenizer (transformers 5's
``TokenizersBackend``), which is the Rust ``tokenizers`` pipeline from ``tokenizer.json``
plus a little set-up from ``tokenizer_config.json``. This module repeats that set-up:

* truncation and padding baked into ``tokenizer.json`` are switched off (HF's ``encode``
  runs with ``DO_NOT_TRUNCATE`` / ``DO_NOT_PAD``);
* named special tokens (``bos_token`` … ``mask_token`` and any other ``*_token`` string)
  and ``additional_special_tokens`` / ``extra_special_tokens`` are registered as special
  added tokens, as ``_post_init`` does;
* BOS/EOS come from ``tokenizer.json``'s post-processor alone: transformers 5 drops
  ``add_bos_token`` / ``add_eos_token`` from the config when a ``tokenizer.json`` exists;
* ``decode`` keeps special tokens (HF's default) and applies ``clean_up_tokenization_spaces``
  only for non-BPE models, as transformers 5 does.

Classes whose ``__init__`` rebuilds the pipeline from vocab/merges (``Qwen2Tokenizer`` and
friends) rebuild the one their ``tokenizer.json`` already holds, so reading the file is
equivalent for them; the engine-side parity test checks the built-in tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servenest.errors import BenchmarkInputError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order.
NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_token(value: Any, by_content: dict[str, Any]):
    """An AddedToken for a special-token value from the config (str or serialised dict)."""
    from tokenizers import AddedToken

    if isinstance(value, dict):
        kwargs = {
            k: value[k]
            for k in ("lstrip", "rstrip", "normalized", "single_word")
            if k in value
        }
        return AddedToken(value["content"], special=True, **kwargs)
    if value in by_content:
        existing = by_content[value]
        return AddedToken(
            value,
            special=True,
            lstrip=existing.lstrip,
            rstrip=existing.rstrip,
            normalized=existing.normalized,
            single_word=existing.single_word,
        )
    return AddedToken(value, special=True, normalized=False)


class Tokenizer:
    """The subset of the HF tokenizer interface that vLLM's benchmark datasets use."""

    def __init__(self, backend, config: dict[str, Any], source: Path):
        self._tok = backend
        self.config = config
        self.source = source
        self._tok.no_truncation()
        self._tok.no_padding()

        added_before = {t.content: t for t in self._tok.get_added_tokens_decoder().values()}

        # Named special tokens, then model-specific "*_token" strings (HF keeps them named).
        self.special_tokens_map: dict[str, str] = {}
        named_values: list[Any] = []
        for key in NAMED_SPECIAL_TOKENS:
            content = _token_content(config.get(key))
            if content is not None:
                self.special_tokens_map[key] = content
                named_values.append(config[key])
        for key, value in config.items():
            if (
                key.endswith("_token")
                and key not in NAMED_SPECIAL_TOKENS
                and _token_content(value) is not None
            ):
                self.special_tokens_map[key] = _token_content(value)
                named_values.append(value)

        extra = config.get("extra_special_tokens", config.get("additional_special_tokens"))
        extra_values: list[Any] = []
        if isinstance(extra, dict):
            for key, value in extra.items():
                if _token_content(value) is not None:
                    self.special_tokens_map[key] = _token_content(value)
                    named_values.append(value)
        elif isinstance(extra, list | tuple):
            extra_values = [v for v in extra if _token_content(v) is not None]

        # Tokens the config's added_tokens_decoder lists but tokenizer.json lacks.
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            from tokenizers import AddedToken

            missing = []
            for _idx, tok in sorted(decoder.items(), key=lambda kv: int(kv[0])):
                if isinstance(tok, dict) and tok.get("content") not in added_before:
                    fields = {k: v for k, v in tok.items() if k not in ("__type", "content")}
                    missing.append(AddedToken(tok["content"], **fields))
            if missing:
                self._tok.add_tokens(missing)

        # HF maps named string tokens onto the AddedTokens it already knows (keeping their
        # flags); extra tokens given as strings become plain special, un-normalized tokens.
        known = dict(added_before)
        if isinstance(decoder, dict):
            from tokenizers import AddedToken

            for tok in decoder.values():
                if isinstance(tok, dict) and isinstance(tok.get("content"), str):
                    fields = {k: v for k, v in tok.items() if k not in ("__type", "content")}
                    known[tok["content"]] = AddedToken(tok["content"], **fields)
        specials = [_added_token(v, known) for v in named_values]
        specials += [_added_token(v, {}) for v in extra_values]
        if specials:
            self._tok.add_special_tokens(specials)

        seen: set[str] = set()
        self.all_special_tokens: list[str] = []
        for content in [_token_content(v) for v in named_values + extra_values]:
            if content is not None and content not in seen:
                seen.add(content)
                self.all_special_tokens.append(content)
        self.all_special_ids: list[int] = [
            i for i in (self._tok.token_to_id(t) for t in self.all_special_tokens) if i is not None
        ]

        # With a tokenizer.json, transformers 5 drops add_bos_token / add_eos_token from the
        # config, so the file's post-processor decides; a missing one becomes "$A" (no BOS/EOS).
        if self._tok.post_processor is None:
            from tokenizers import processors

            self._tok.post_processor = processors.TemplateProcessing(
                single="$A:0", pair="$A:0 $B:1", special_tokens=[]
            )

        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.chat_template = self._find_chat_template(config, source)

    @staticmethod
    def _find_chat_template(config: dict[str, Any], source: Path) -> str | dict | None:
        # A chat_template.jinja file beside the tokenizer wins over the config's entry.
        jinja = source.parent / "chat_template.jinja"
        template = (
            jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
        )
        if isinstance(template, list):
            template = {t["name"]: t["template"] for t in template}
        return template

    # ---- the HF interface -------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``tokenizer.encode(text)`` / ``tokenizer(text).input_ids``."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":
            text = _clean_up_tokenization(text)
        return text

    @property
    def vocab_size(self) -> int:
        """The full vocabulary with added tokens: HF's ``len(tokenizer)``."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def base_vocab_size(self) -> int:
        """The base vocabulary without added tokens: HF's ``tokenizer.vocab_size`` property,
        which vLLM's random dataset uses for its token ranges."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.vocab_size

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tok.num_special_tokens_to_add(pair)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        bos = self.special_tokens_map.get("bos_token")
        return None if bos is None else self._tok.token_to_id(bos)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens_map.get("eos_token")
        return None if eos is None else self._tok.token_to_id(eos)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = False, **kwargs: Any
    ) -> str:
        """HF's ``apply_chat_template(..., tokenize=False)``: the same jinja2 environment and
        variables (named special tokens, then caller kwargs)."""
        template = self.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise BenchmarkInputError(
                f"the tokenizer at {self.source.parent} has no chat template "
                f"(tokenizer_config.json 'chat_template' or chat_template.jinja); "
                "skip the chat template for this dataset"
            )
        compiled = _compile_template(template)
        variables = {**self.special_tokens_map, **kwargs}
        return compiled.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


_TEMPLATES: dict[str, Any] = {}


def _compile_template(source: str):
    """transformers' ``_compile_jinja_template`` (without the assistant-mask extension)."""
    if source in _TEMPLATES:
        return _TEMPLATES[source]
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    _TEMPLATES[source] = compiled = env.from_string(source)
    return compiled


def load_tokenizer(model_dir_or_tokenizer_json: str | Path) -> Tokenizer:
    """Load ``tokenizer.json`` (and ``tokenizer_config.json`` beside it, when present) from a
    model directory or the path of the ``tokenizer.json`` itself."""
    from tokenizers import Tokenizer as Backend

    path = Path(model_dir_or_tokenizer_json).expanduser()
    tokenizer_json = path / TOKENIZER_FILE if path.is_dir() else path
    if not tokenizer_json.is_file():
        where = f"directory {path}" if path.is_dir() else str(path)
        raise BenchmarkInputError(
            f"no {TOKENIZER_FILE} at {where}: the benchmark counts prompt tokens with the "
            "model's fast tokenizer, so give the model directory (or its tokenizer.json)"
        )
    try:
        backend = Backend.from_file(str(tokenizer_json))
    except Exception as exc:  # the Rust loader raises plain Exception subclasses
        raise BenchmarkInputError(f"{tokenizer_json} is not a usable tokenizer.json: {exc}") from exc

    config: dict[str, Any] = {}
    config_path = tokenizer_json.parent / CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BenchmarkInputError(f"{config_path} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise BenchmarkInputError(f"{config_path} must hold a JSON object")
    return Tokenizer(backend, config, tokenizer_json)
