"""servenest/bench/trend.py: the trend chart, its text fallback, cost per run, headline figures."""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from servenest.bench.gate import history_row
from servenest.bench.run import BenchSettings
from servenest.bench.trend import (
    MAX_CHART_RUNS,
    cost_per_run,
    sparkline,
    summarize_benchmark,
    trend_markdown,
    trend_svg,
)

SVG = "{http://www.w3.org/2000/svg}"
SERIES = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "output_throughput")


def run(i: int, **overrides) -> dict:
    row = {"date": f"20250301-{i // 60:02d}{i % 60:02d}00", "median_ttft_ms": 50.0 + i,
           "p99_ttft_ms": 120.0 + 2 * i, "median_tpot_ms": 8.0, "p99_tpot_ms": 12.0 + i % 3,
           "output_throughput": 300.0 - i, "valid": True, "duration_s": 90.0, "hourly_price_usd": 36.0}
    return {**row, **overrides}


def chart(rows: list[dict]) -> ET.Element:
    return ET.fromstring(trend_svg(rows))  # also proves it is well-formed XML


def points(root: ET.Element, series: str) -> list[list[tuple[float, float]]]:
    """Each polyline of a series as its (x, y) points."""
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline") if line.get("data-series") == series]


def test_three_panels_and_one_point_per_run_and_series():
    root = chart([run(i) for i in range(7)])
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"]) == 3
    for series in SERIES:
        lines = points(root, series)
        assert len(lines) == 1 and len(lines[0]) == 7
        xs = [x for x, _ in lines[0]]
        assert xs == sorted(xs) and len(set(xs)) == 7  # run index, left to right
    # Throughput falls run by run: in SVG, y grows downwards.
    ys = [y for _, y in points(root, "output_throughput")[0]]
    assert ys == sorted(ys)
    assert "03-01 00:00" in trend_svg([run(i) for i in range(7)])  # date labels


@pytest.mark.parametrize("missing", [None, math.nan, "", "n/a"])
def test_a_missing_value_breaks_the_line_instead_of_plotting_zero(missing):
    rows = [run(i) for i in range(6)]
    rows[2]["p99_ttft_ms"] = missing
    root = chart(rows)
    lines = points(root, "p99_ttft_ms")
    assert [len(line) for line in lines] == [2, 3]
    complete = points(root, "median_ttft_ms")[0]
    assert complete[2][0] not in {x for line in lines for x, _ in line}  # nothing drawn at run 3
    markers = [c for c in root.iter(f"{SVG}circle") if c.get("data-series") == "p99_ttft_ms"]
    assert len(markers) == 5


def test_one_run_and_a_series_never_measured():
    root = chart([run(0, p99_tpot_ms=None)])
    assert [len(line) for line in points(root, "median_ttft_ms")] == [1]
    assert points(root, "p99_tpot_ms") == []
    assert chart([]) is not None  # no runs yet: still a valid image


def test_many_runs_keep_the_last_fifty():
    rows = [run(i) for i in range(MAX_CHART_RUNS + 30)]
    root = chart(rows)
    assert len(points(root, "output_throughput")[0]) == MAX_CHART_RUNS
    text = trend_svg(rows)
    assert "03-01 00:29" not in text and "03-01 01:19" in text  # the first 30 runs are gone


def test_sparkline_heights_follow_the_values():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    line = sparkline(values)
    by_value = [ch for _, ch in sorted(zip(values, line, strict=True))]
    assert by_value == sorted(by_value)  # larger value, taller (or equal) block
    assert line[1] == "▁" and line[2] == "█"
    assert sparkline([1.0, None, 2.0]) == "▁ █"
    assert sparkline([4.0, 4.0]) == "▄▄"  # flat: mid-height


def test_cost_per_run_is_duration_times_the_hourly_price():
    assert cost_per_run(run(0)) == pytest.approx(0.9)  # 90 s at $36/h
    assert cost_per_run(run(0, duration_s="1800", hourly_price_usd=10)) == pytest.approx(5.0)
    assert cost_per_run(run(0, hourly_price_usd=None)) is None
    assert cost_per_run({"hourly_price_usd": 36.0}) is None  # rows from before durations were kept
    assert cost_per_run(run(0, duration_s=math.nan)) is None


def test_markdown_embeds_the_chart_and_a_text_table_of_the_last_ten_runs():
    rows = [run(i) for i in range(12)]
    rows[-1]["hourly_price_usd"] = None
    md = trend_markdown("qwq", rows)
    data = re.search(r"!\[trend\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", md).group(1)
    assert base64.b64decode(data).decode() == trend_svg(rows)
    # One block per run of the last ten; latency rises while throughput falls.
    assert "| p99 TTFT | `▁▂▃▃▄▅▆▆▇█` | 142 | 124 | 142 |" in md
    assert "| tok/s | `█▇▆▆▅▄▃▃▂▁` |" in md
    runs = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [line.split(" | ")[0] for line in runs] == [f"| {i}" for i in range(3, 13)]
    assert runs[0].startswith("| 3 | 03-01 00:02 | yes | 52.0 | 124 |")
    assert runs[0].endswith("| 298 | $0.90 |") and runs[-1].endswith("| - |")  # cost per run


def test_summarize_benchmark_keeps_the_headline_figures_as_json_safe_values():
    summary = summarize_benchmark(run(0, p99_tpot_ms=math.nan), passed=True, at=1700.0)
    assert summary == {"p99_ttft_ms": 120.0, "p99_tpot_ms": None, "output_throughput": 300.0,
                       "passed": True, "at": 1700.0}
    assert summarize_benchmark({}, passed=False)["at"] > 0  # defaults to now


def test_history_rows_carry_what_the_run_cost():
    stats = {k: {"median": 1.0, "percentiles": [(99.0, 2.0)]} for k in ("ttft", "tpot", "itl")}
    outcome = SimpleNamespace(
        settings=BenchSettings(base_url="http://x", model="m"), valid=True,
        metrics=SimpleNamespace(stats=stats, completed=5, failed=0, output_throughput=100.0,
                                request_throughput=1.0),
        result={"date": "20250301-000000", "request_rate": 1.0, "duration": 90.0},
    )
    row = history_row(outcome, hourly_price=36.0)
    assert row["duration_s"] == 90.0 and row["hourly_price_usd"] == 36.0
    assert cost_per_run(row) == pytest.approx(0.9)
