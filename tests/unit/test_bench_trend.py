"""servenest/bench/trend.py: the trend chart, its text fallback, cost per run, headline figures."""

from __future__ import annotations

import base64
import io
import math
import re
from types import SimpleNamespace

import pytest

from servenest.bench.gate import history_row
from servenest.bench.run import BenchSettings
from servenest.bench.trend import (
    DPI,
    FIG_H,
    FIG_W,
    MAX_CHART_RUNS,
    PANELS,
    cost_per_run,
    sparkline,
    summarize_benchmark,
    trend_figure,
    trend_markdown,
    trend_png,
)

SERIES = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "output_throughput")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(i: int, **overrides) -> dict:
    row = {"date": f"20250301-{i // 60:02d}{i % 60:02d}00", "median_ttft_ms": 50.0 + i,
           "p99_ttft_ms": 120.0 + 2 * i, "median_tpot_ms": 8.0, "p99_tpot_ms": 12.0 + i % 3,
           "output_throughput": 300.0 - i, "valid": True, "duration_s": 90.0, "hourly_price_usd": 36.0}
    return {**row, **overrides}


def lines(fig) -> dict[str, tuple[list[float], list[float]]]:
    """Each series' plotted (x, y) data, by its history key."""
    return {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata()))
            for ax in fig.axes for line in ax.get_lines()}


def drawn(ys: list[float]) -> list[list[int]]:
    """The runs of consecutive finite points: what matplotlib joins into one line."""
    out: list[list[int]] = [[]]
    for i, y in enumerate(ys):
        if math.isnan(y):
            out.append([])
        else:
            out[-1].append(i)
    return [s for s in out if s]


def test_three_panels_and_one_point_per_run_and_series():
    fig = trend_figure([run(i) for i in range(7)])
    assert [ax.get_title(loc="left") for ax in fig.axes] == [title for title, _ in PANELS]
    data = lines(fig)
    assert set(data) == set(SERIES)
    for key in SERIES:
        xs, ys = data[key]
        assert xs == list(range(7)) and len(ys) == 7  # run index, left to right
    assert data["output_throughput"][1] == [300.0 - i for i in range(7)]
    assert data["p99_ttft_ms"][1] == [120.0 + 2 * i for i in range(7)]
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels[0] == "03-01 00:00" and labels[-1] == "03-01 00:06" and len(labels) <= 7


@pytest.mark.parametrize("missing", [None, math.nan, "", "n/a"])
def test_a_missing_value_breaks_the_line_instead_of_plotting_zero(missing):
    rows = [run(i) for i in range(6)]
    rows[2]["p99_ttft_ms"] = missing
    data = lines(trend_figure(rows))
    assert drawn(data["p99_ttft_ms"][1]) == [[0, 1], [3, 4, 5]]  # nothing at run 3, not 0
    assert drawn(data["median_ttft_ms"][1]) == [[0, 1, 2, 3, 4, 5]]


def test_one_run_and_a_series_never_measured():
    fig = trend_figure([run(0, p99_tpot_ms=None)])
    data = lines(fig)
    assert data["median_ttft_ms"][1] == [50.0]
    assert drawn(data["p99_tpot_ms"][1]) == []
    assert fig.axes[-1].get_xlim() == (-0.5, 0.5)  # the one run sits mid-chart
    assert trend_png([]).startswith(PNG_SIGNATURE)  # no runs yet: still an image


def test_many_runs_keep_the_last_fifty():
    rows = [run(i) for i in range(MAX_CHART_RUNS + 30)]
    fig = trend_figure(rows)
    xs, ys = lines(fig)["output_throughput"]
    assert len(xs) == MAX_CHART_RUNS and ys[0] == 300.0 - 30  # the first 30 runs are gone
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels[0] == "03-01 00:30" and labels[-1] == "03-01 01:19"


def test_the_png_is_the_chart_at_its_size_and_the_same_rows_give_the_same_bytes():
    from PIL import Image

    rows = [run(i) for i in range(5)]
    png = trend_png(rows)
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (round(FIG_W * DPI), round(FIG_H * DPI)))
    # Drawn, not blank: the three colours of the series are among its pixels.
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert {(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)} <= colours
    assert trend_png(rows) == png


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
    data = re.search(r"!\[Benchmark trend of qwq\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md).group(1)
    assert base64.b64decode(data) == trend_png(rows)
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
