"""A short load check: a few concurrent streamed chat completions through the endpoint.

Not the benchmark (that measures by vLLM's definitions); this proves the endpoint
serves several clients at once and reports what they saw.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass
class LoadCheckResult:
    requests: int
    succeeded: int
    failed: int
    errors: list[str]
    output_tokens: int
    duration_s: float
    median_latency_ms: float | None
    median_ttft_ms: float | None

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s else 0.0


async def _one(client: httpx.AsyncClient, body: dict, headers: dict) -> tuple[float, float | None, int]:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:120]}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - started, ttft, tokens


async def _run(base_url: str, model: str, api_key: str, requests: int, concurrency: int, max_tokens: int):
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits, trust_env=False) as client:

        async def bounded(i: int):
            body = {
                "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Request {i}: say something."}],
            }
            async with sem:
                return await _one(client, body, headers)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(requests)), return_exceptions=True)
        return results, time.perf_counter() - started


def run_load_check(
    base_url: str, model: str, api_key: str, requests: int = 16, concurrency: int = 4, max_tokens: int = 16
) -> LoadCheckResult:
    results, duration = asyncio.run(_run(base_url, model, api_key, requests, concurrency, max_tokens))
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    ttfts = [r[1] * 1000 for r in ok if r[1] is not None]
    return LoadCheckResult(
        requests=requests, succeeded=len(ok), failed=len(errors), errors=errors[:5],
        output_tokens=sum(r[2] for r in ok), duration_s=duration,
        median_latency_ms=statistics.median(r[0] * 1000 for r in ok) if ok else None,
        median_ttft_ms=statistics.median(ttfts) if ttfts else None,
    )
