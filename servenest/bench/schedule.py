"""When each request is sent: vLLM 0.32's ``get_request`` (``vllm/benchmarks/serve.py``).

vLLM seeds numpy's *global* legacy generator in ``main_async`` (``np.random.seed(seed)``)
and nothing else draws from it before ``get_request`` for the text datasets (the random
dataset uses its own ``default_rng``), so its gaps are the first draws of
``RandomState(seed)``. Per request it draws ``np.random.gamma(shape=burstiness,
scale=1 / (rate * burstiness))`` (``1 / rate`` when burstiness is infinite, 0 when the
rate is infinite), sums the gaps in order and, with no ramp-up, rescales them so the last
send lands at exactly ``N / rate``. Request ``i`` is sent at ``start + delay_ts[i]``, so
the first request also waits its gap. A private ``RandomState`` gives the same stream
without touching the global one.
"""

from __future__ import annotations

import math

import numpy as np

from servenest.errors import BenchmarkInputError


def arrival_offsets(
    num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Send offsets in seconds from the benchmark start, one per request (float64)."""
    if isinstance(num_requests, bool) or not isinstance(num_requests, int | np.integer):
        raise BenchmarkInputError(f"num_requests must be an integer, got {num_requests!r}")
    if num_requests <= 0:
        raise BenchmarkInputError(f"num_requests must be at least 1, got {num_requests}")
    rate = _positive("request_rate", request_rate)
    shape = _positive("burstiness", burstiness)

    if rate == math.inf:
        return np.zeros(num_requests, dtype=np.float64)

    delay_ts: list[float] = []
    if shape == math.inf:
        delay_ts = [1.0 / rate] * num_requests
    else:
        rng = np.random.RandomState(seed)
        theta = 1.0 / (rate * shape)
        # One scalar draw per request, as vLLM's loop does.
        delay_ts = [rng.gamma(shape=shape, scale=theta) for _ in range(num_requests)]

    for i in range(1, len(delay_ts)):
        delay_ts[i] += delay_ts[i - 1]
    if delay_ts[-1] != 0:
        normalize_factor = (num_requests / rate) / delay_ts[-1]
        delay_ts = [delay * normalize_factor for delay in delay_ts]
    return np.asarray(delay_ts, dtype=np.float64)


def _positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BenchmarkInputError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number) or number <= 0:
        raise BenchmarkInputError(f"{name} must be greater than 0 (or inf), got {value!r}")
    return number
