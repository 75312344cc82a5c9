"""servenest/connection.py: the connection card never shows the key, and its curl works."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess

import pytest

from servenest.connection import (
    connection_card,
    curl_command,
    key_command,
    mask_key,
    openai_snippet,
)


def revealed(key: str, masked: str) -> int:
    """How many characters of ``key`` the masked form shows (its non-mask characters)."""
    return sum(1 for ch in masked if ch not in "*…")


@pytest.mark.parametrize("length", [0, 1, 4, 7, 8, 9, 12, 16, 35, 64])
def test_mask_key_never_reveals_more_than_3_plus_4_chars(length):
    key = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyz0123456789") for _ in range(length))
    masked = mask_key(key)
    assert revealed(key, masked) <= 7
    if length > 7:
        assert key not in masked
    if length >= 16:
        assert masked == f"{key[:3]}…{key[-4:]}"
        assert key[3:-4] not in masked
    else:  # a short key would be mostly visible with 7 characters shown
        assert revealed(key, masked) == 0


def test_mask_key_of_a_short_key_reveals_nothing():
    assert mask_key("sk-12345") == "********"


def test_connection_card_never_contains_the_full_key():
    key = f"sk-{secrets.token_urlsafe(24)}"
    card = connection_card("local-tiny", "http://127.0.0.1:8000", "tiny", key, "local-tiny-api-key", False)
    assert key not in card
    assert key[3:-4] not in card
    assert mask_key(key) in card
    assert "local-tiny-api-key" in card  # where the key is
    assert key_command("local-tiny") in card
    assert "http://127.0.0.1:8000/v1" in card
    assert "private" in card


def test_connection_card_says_public_when_public():
    card = connection_card("d", "http://1.2.3.4:8000", "m", "sk-" + "x" * 30, "s", True)
    assert "| Access | public |" in card


def test_every_table_of_the_card_has_a_header_with_words():
    # An empty header row ("| | |") renders as a blank bar above the table in the UI.
    lines = connection_card("d", "http://1.2.3.4:8000", "m", "sk-" + "x" * 30, "s", False).splitlines()
    headers = [lines[i - 1] for i, line in enumerate(lines) if re.fullmatch(r"\|(-+\|)+", line)]
    assert len(headers) == 2
    for header in headers:
        cells = [c.strip() for c in header.strip("|").split("|")]
        assert all(cells), header
    assert headers[0] == "| Endpoint | Value |"


def run_as_shell(command: str, key: str) -> list[str]:
    """Run the command in bash with `curl` replaced by a function printing its arguments."""
    script = 'curl() { for a in "$@"; do printf "%s\\0" "$a"; done; }\n' + command
    out = subprocess.run(
        ["bash", "-c", script], env={"PATH": os.environ.get("PATH", os.defpath), "SERVENEST_API_KEY": key},
        capture_output=True, check=True,
    ).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("model", ["tiny", "Qwen/Qwen3-8B", "it's-a-model"])
def test_curl_command_runs_as_shown_and_sends_valid_json(model):
    key = "sk-" + secrets.token_urlsafe(16)
    args = run_as_shell(curl_command("http://127.0.0.1:8000", model), key)
    assert args[0] == "http://127.0.0.1:8000/v1/chat/completions"
    assert "Content-Type: application/json" in args
    assert f"Authorization: Bearer {key}" in args  # the key comes from the environment
    body = json.loads(args[args.index("-d") + 1])
    assert body["stream"] is True
    assert body["model"] == model
    assert body["messages"][0]["role"] == "user" and body["messages"][0]["content"]
    assert body["max_tokens"] == 64


def test_curl_command_never_embeds_a_key():
    cmd = curl_command("http://127.0.0.1:8000", "tiny")
    assert "${SERVENEST_API_KEY}" in cmd
    assert "sk-" not in cmd


def test_openai_snippet_is_valid_python_reading_the_key_from_the_environment():
    code = openai_snippet("http://127.0.0.1:8000", "tiny")
    compile(code, "<snippet>", "exec")
    assert 'os.environ["SERVENEST_API_KEY"]' in code
    assert 'base_url="http://127.0.0.1:8000/v1"' in code
    assert "stream=True" in code
