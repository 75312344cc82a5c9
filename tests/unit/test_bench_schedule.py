"""The arrival schedule: vLLM 0.32's get_request offsets (gamma gaps, cumsum, rescale)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servenest.bench.schedule import arrival_offsets
from servenest.errors import BenchmarkInputError


def vllm_reference(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """serve.main_async's np.random.seed(seed), then get_request's loop, verbatim."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        delay_ts = []
        for _ in range(n):
            if rate == float("inf"):
                delay_ts.append(0)
            elif burstiness == float("inf"):
                delay_ts.append(1.0 / rate)
            else:
                theta = 1.0 / (rate * burstiness)
                delay_ts.append(np.random.gamma(shape=burstiness, scale=theta))
        for i in range(1, len(delay_ts)):
            delay_ts[i] += delay_ts[i - 1]
        if delay_ts[-1] != 0:
            factor = (n / rate) / delay_ts[-1]
            delay_ts = [d * factor for d in delay_ts]
        return delay_ts
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("burstiness", [1.0, 0.5, 3.0, math.inf])
def test_same_draws_as_vllm_global_generator(seed, burstiness):
    ours = arrival_offsets(200, 10.0, burstiness, seed=seed)
    assert ours.tolist() == vllm_reference(200, 10.0, burstiness, seed)


def test_global_numpy_state_is_left_alone():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    arrival_offsets(50, 5.0, seed=0)
    assert np.random.random() == before


def test_shape_first_request_waits_and_last_lands_at_n_over_rate():
    offsets = arrival_offsets(100, 20.0, seed=0)
    assert offsets.shape == (100,) and offsets.dtype == np.float64
    assert offsets[0] > 0
    assert np.all(np.diff(offsets) >= 0)
    assert offsets[-1] == pytest.approx(100 / 20.0, abs=1e-12)


def test_deterministic_per_seed():
    assert np.array_equal(arrival_offsets(64, 4.0, 0.7, seed=3), arrival_offsets(64, 4.0, 0.7, seed=3))
    assert not np.array_equal(arrival_offsets(64, 4.0, seed=0), arrival_offsets(64, 4.0, seed=1))


def test_infinite_rate_sends_everything_at_once():
    assert arrival_offsets(10, math.inf, seed=0).tolist() == [0.0] * 10
    assert arrival_offsets(3, float("inf"), burstiness=0.1).tolist() == [0.0] * 3


def test_infinite_burstiness_gives_constant_gaps():
    offsets = arrival_offsets(10, 4.0, math.inf)
    np.testing.assert_allclose(offsets, [0.25 * (i + 1) for i in range(10)], atol=1e-12)


def test_lower_burstiness_is_burstier():
    def cv(b):
        gaps = np.diff(np.concatenate([[0.0], arrival_offsets(4000, 10.0, b, seed=0)]))
        return gaps.std() / gaps.mean()

    # gamma(k) gaps: coefficient of variation 1/sqrt(k)
    assert cv(0.25) == pytest.approx(2.0, rel=0.15)
    assert cv(1.0) == pytest.approx(1.0, rel=0.1)
    assert cv(4.0) == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"request_rate": 0}, "request_rate must be greater than 0"),
        ({"request_rate": -2.0}, "request_rate must be greater than 0"),
        ({"request_rate": float("nan")}, "request_rate must be greater than 0"),
        ({"request_rate": "fast"}, "request_rate must be a number"),
        ({"burstiness": 0}, "burstiness must be greater than 0"),
        ({"burstiness": -1.0}, "burstiness must be greater than 0"),
        ({"num_requests": 0}, "num_requests must be at least 1"),
        ({"num_requests": -5}, "num_requests must be at least 1"),
        ({"num_requests": 2.5}, "num_requests must be an integer"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    args = {"num_requests": 10, "request_rate": 1.0, "burstiness": 1.0, **kwargs}
    with pytest.raises(BenchmarkInputError, match=message):
        arrival_offsets(**args)
