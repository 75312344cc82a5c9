"""The connection card: how to call a deployed endpoint, as the seeds' usage page shows it.

The key is never printed: the card shows it masked and tells how to read it from its
Secret block, so the card can be pasted into a ticket or a chat safely.
"""

from __future__ import annotations

import json
import shlex


def mask_key(key: str) -> str:
    # Short keys are masked whole: 3 + 4 visible characters would give most of them away.
    if len(key) < 16:
        return "*" * 8
    return f"{key[:3]}…{key[-4:]}"


def curl_command(base_url: str, model: str, prompt: str = "你是谁？", max_tokens: int = 64) -> str:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        },
        ensure_ascii=False,
    )
    return (
        f"curl {base_url}/v1/chat/completions \\\n"
        '  -H "Content-Type: application/json" \\\n'
        '  -H "Authorization: Bearer ${SERVENEST_API_KEY}" \\\n'
        f"  -d {shlex.quote(body)}"
    )


def openai_snippet(base_url: str, model: str) -> str:
    return (
        "import os\n"
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["SERVENEST_API_KEY"])\n'
        "stream = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "Who are you?"}],\n'
        "    max_tokens=64,\n"
        "    stream=True,\n"
        ")\n"
        "for chunk in stream:\n"
        "    if chunk.choices and chunk.choices[0].delta.content:\n"
        '        print(chunk.choices[0].delta.content, end="", flush=True)\n'
        "print()\n"
    )


def key_command(deployment: str, servenest: str = "servenest") -> str:
    return f'export SERVENEST_API_KEY="$({servenest} key {deployment})"'


def connection_card(
    deployment: str, base_url: str, model: str, api_key: str, secret_block: str, public: bool,
    servenest: str = "servenest",
) -> str:
    access = "public" if public else "private (this machine / VPC only)"
    # A real header row: the UI's markdown renders an empty one as a blank bar.
    return f"""# {deployment}: connection card

| Endpoint | Value |
|---|---|
| Base URL | `{base_url}/v1` |
| Model | `{model}` |
| API key | `{mask_key(api_key)}` (Secret block `{secret_block}`) |
| Access | {access} |

## Get the key
```bash
{key_command(deployment, servenest)}
```

## curl (streaming)
```bash
{curl_command(base_url, model)}
```

## OpenAI Python SDK
```python
{openai_snippet(base_url, model)}```

## Chatbox
| Setting | Value |
|---|---|
| Model provider | Add a custom provider |
| Name | vLLM API |
| API domain | `{base_url}` |
| API path | `/v1/chat/completions` |
| Improve network compatibility | on |
| API key | the key above |
| Model | `{model}` |
"""
