"""servenest/bench/gate.py: SLO verdicts, regressions against history, the rate sweep, cost."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from servenest.bench.gate import (
    Slo,
    cost_per_million_output_tokens,
    regressions,
    slo_violations,
    sweep_max_rate,
)


def outcome(p99_ttft=100.0, p99_tpot=10.0, goodput=5.0, throughput=500.0, completed=10, invalid=()):
    stats = {k: {"percentiles": [(99.0, v)], "median": v / 2} for k, v in
             (("ttft", p99_ttft), ("tpot", p99_tpot), ("itl", p99_tpot), ("e2el", p99_ttft))}
    m = SimpleNamespace(completed=completed, failed=0, request_goodput=goodput,
                        output_throughput=throughput, stats=stats)
    return SimpleNamespace(metrics=m, invalid_reasons=list(invalid), valid=not invalid)


def test_slos_met_and_missed():
    slo = Slo(p99_ttft_ms=200, p99_tpot_ms=20, min_goodput_rps=1, min_output_throughput=100)
    assert slo_violations(outcome(), slo) == []
    missed = slo_violations(outcome(p99_ttft=250, throughput=50), slo)
    assert any("p99 TTFT 250.0 ms > SLO 200" in v for v in missed)
    assert any("output throughput 50.0" in v for v in missed)
    assert slo_violations(outcome(completed=0), Slo()) == ["no request succeeded (0 failed)"]
    assert Slo(p99_ttft_ms=200, p99_tpot_ms=20).goodput == {"ttft": 200, "tpot": 20}


def row(ttft=10.0, tpot=2.0, itl=2.0, thr=100.0, valid=True):
    return {"median_ttft_ms": ttft, "median_tpot_ms": tpot, "median_itl_ms": itl,
            "output_throughput": thr, "valid": valid}


def test_regressions_beyond_the_margin_against_recent_valid_runs():
    history = [row(), row(ttft=11), row(ttft=9), row(ttft=500, valid=False)]
    assert regressions(row(ttft=11.5), history, margin=0.2) == []
    found = regressions(row(ttft=13, thr=70), history, margin=0.2)
    assert len(found) == 2
    assert any(f.startswith("median_ttft_ms 13.00 vs 10.00") for f in found)
    assert any(f.startswith("output_throughput 70.00 vs 100.00") for f in found)
    assert regressions(row(ttft=99), [], margin=0.2) == []  # no history, nothing to compare


def test_sweep_finds_the_highest_rate_meeting_the_slos():
    limit = 37.0

    def run_at(rate):
        return outcome(p99_ttft=50 if rate <= limit else 900)

    best, trials = sweep_max_rate(run_at, Slo(p99_ttft_ms=200), start_rate=4, max_rate=1000, refine_steps=4)
    assert [r for r, _ in trials][:5] == [4, 8, 16, 32, 64]
    assert 32 <= best <= limit and limit - best < 4
    assert all(not problems for rate, problems in trials if rate <= limit)


def test_sweep_counts_an_invalid_run_as_a_miss():
    best, trials = sweep_max_rate(lambda r: outcome(invalid=["client behind"] if r > 10 else ()),
                                  Slo(), start_rate=5, max_rate=100, refine_steps=0)
    assert best == 10 and "invalid: client behind" in trials[-1][1]


def test_cost_per_million_output_tokens():
    # 1,000 tok/s = 3.6 M tok/h; at $36/h that is $10 per million.
    assert cost_per_million_output_tokens(36.0, 1000.0) == pytest.approx(10.0)
    assert cost_per_million_output_tokens(None, 1000.0) is None


def test_runs_of_another_load_are_not_a_baseline():
    history = [{**row(ttft=10.0), "load": "openai|random|200|20.0"}] * 3
    current = {**row(ttft=30.0), "load": "openai|random|10|inf"}
    assert regressions(current, history, margin=0.2) == []
    assert regressions({**current, "load": "openai|random|200|20.0"}, history, margin=0.2)
