"""The benchmark history as a trend: a hand-written SVG chart, a plain-text fallback with
sparklines, what each run cost, and the headline figures a registered endpoint keeps.

Rows are ``gate.history_row`` dicts, oldest first. They come back from a table artifact,
so any figure may be missing, NaN, an empty string or a number as text.
"""

from __future__ import annotations

import base64
import math
import time
from datetime import datetime
from xml.sax.saxutils import escape

MAX_CHART_RUNS = 50
TABLE_RUNS = 10
SPARKS = "▁▂▃▄▅▆▇█"

# (panel title, [(history key, legend, colour)]): one panel per unit.
PANELS = (
    ("TTFT (ms)", [("median_ttft_ms", "median", "#1f77b4"), ("p99_ttft_ms", "p99", "#ff7f0e")]),
    ("TPOT (ms)", [("median_tpot_ms", "median", "#1f77b4"), ("p99_tpot_ms", "p99", "#ff7f0e")]),
    ("output throughput (tok/s)", [("output_throughput", "tok/s", "#2ca02c")]),
)

# Chart geometry, in SVG user units.
WIDTH, PANEL_H, GAP, LEFT, RIGHT, TOP, INSET = 640, 120, 44, 56, 40, 28, 8


def value(row: dict, key: str) -> float | None:
    """A finite number, or None for anything else (so a gap is never drawn as 0)."""
    v = row.get(key)
    if isinstance(v, bool) or v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def cost_per_run(row: dict) -> float | None:
    """What the benchmark run itself cost (USD): its duration x the hardware's hourly price."""
    duration, hourly = value(row, "duration_s"), value(row, "hourly_price_usd")
    if duration is None or hourly is None:
        return None
    return duration / 3600 * hourly


def summarize_benchmark(row: dict, *, passed: bool, at: float | None = None) -> dict:
    """The headline figures of one run, as ``ServeNestEndpoint.last_benchmark`` keeps them.

    Args:
        row: The run's ``servenest.bench.gate.history_row``.
        passed: Whether the run passed its gate (valid, SLOs met, and no regression when
            regressions fail the run): the row alone cannot tell.
        at: Unix time of the run; default now.

    Returns:
        ``{"p99_ttft_ms", "p99_tpot_ms", "output_throughput", "passed", "at"}``; a missing
        or NaN figure is None, since the block is stored as JSON.
    """
    return {
        "p99_ttft_ms": value(row, "p99_ttft_ms"), "p99_tpot_ms": value(row, "p99_tpot_ms"),
        "output_throughput": value(row, "output_throughput"),
        "passed": bool(passed), "at": time.time() if at is None else at,
    }


def _date_label(row: dict, index: int) -> str:
    # history_row dates are vLLM's "%Y%m%d-%H%M%S"; anything else is shown as the run index.
    try:
        return datetime.strptime(str(row.get("date")), "%Y%m%d-%H%M%S").strftime("%m-%d %H:%M")
    except ValueError:
        return f"#{index + 1}"


def _segments(points: list[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive known points: a missing value breaks the line."""
    out: list[list[tuple[float, float]]] = [[]]
    for p in points:
        if p is None:
            if out[-1]:
                out.append([])
        else:
            out[-1].append(p)
    return [s for s in out if s]


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _panel(title: str, series: list[tuple[str, str, str]], rows: list[dict], top: float) -> list[str]:
    plot_w = WIDTH - LEFT - RIGHT
    inner = plot_w - 2 * INSET  # markers stay off the frame
    n = len(rows)

    def x(i: int) -> float:
        # One run sits in the middle rather than on the axis.
        return LEFT + INSET + (inner / 2 if n == 1 else i * inner / (n - 1))

    known = [v for key, _, _ in series for r in rows if (v := value(r, key)) is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    ticks = sorted({lo, hi}) if known else []
    if hi == lo:  # a flat line sits mid-panel
        lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)

    def y(v: float) -> float:
        return round(top + PANEL_H - INSET - (v - lo) / (hi - lo) * (PANEL_H - 2 * INSET), 1)

    out = [f'<g class="panel" data-title="{escape(title)}">',
           f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#ccc"/>',
           f'<text x="{LEFT}" y="{top - 8}" font-size="12" font-weight="bold">{escape(title)}</text>']
    for v in ticks:  # the smallest and largest value shown, with a faint guide line
        out += [f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v)}" y2="{y(v)}" stroke="#eee"/>',
                f'<text x="{LEFT - 4}" y="{y(v) + 4}" font-size="10" text-anchor="end">{_num(v)}</text>']
    legend_x = WIDTH - RIGHT
    for _, legend, colour in reversed(series):
        out.append(f'<text x="{legend_x}" y="{top - 8}" font-size="11" text-anchor="end" '
                   f'fill="{colour}">{escape(legend)}</text>')
        legend_x -= 8 * len(legend) + 12
    for key, _, colour in series:
        points = [None if (v := value(r, key)) is None else (round(x(i), 1), y(v))
                  for i, r in enumerate(rows)]
        for seg in _segments(points):
            coords = " ".join(f"{px},{py}" for px, py in seg)
            out.append(f'<polyline data-series="{key}" points="{coords}" fill="none" '
                       f'stroke="{colour}" stroke-width="1.5"/>')
        # Markers keep a lone point (one run, or one between gaps) visible.
        out += [f'<circle data-series="{key}" cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>'
                for px, py in filter(None, points)]
    # At most ~6 date labels, always the first and the last run.
    step = max(1, math.ceil(n / 6))
    for i in [*(i for i in range(0, n - 1, step) if n - 1 - i >= step / 2), n - 1]:
        out.append(f'<text x="{round(x(i), 1)}" y="{top + PANEL_H + 14}" font-size="10" '
                   f'text-anchor="middle">{escape(_date_label(rows[i], i))}</text>')
    out.append("</g>")
    return out


def trend_svg(rows: list[dict]) -> str:
    """A self-contained SVG chart of the last ``MAX_CHART_RUNS`` runs: latency and throughput."""
    rows = rows[-MAX_CHART_RUNS:]
    height = TOP + len(PANELS) * (PANEL_H + GAP)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if not rows:
        parts.append(f'<text x="{LEFT}" y="{TOP}" font-size="12">no benchmark runs yet</text>')
    else:
        for k, (title, series) in enumerate(PANELS):
            parts += _panel(title, series, rows, TOP + k * (PANEL_H + GAP))
    parts.append("</svg>")
    return "\n".join(parts)


def sparkline(values: list[float | None]) -> str:
    """One block character per value, taller for larger; a blank for a missing value."""
    known = [v for v in values if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
    top = len(SPARKS) - 1
    return "".join(
        " " if v is None else SPARKS[top // 2 if hi == lo else round((v - lo) / (hi - lo) * top)]
        for v in values
    )


def _cell(v: float | None, fmt=_num) -> str:
    return "-" if v is None else fmt(v)


def _usd(v: float) -> str:
    # A short run costs cents: keep enough digits to compare runs.
    return f"${v:.2f}" if v >= 0.1 else f"${v:.2g}"


def trend_markdown(deployment: str, rows: list[dict]) -> str:
    """The trend chart as an embedded image, and the same trend as text for where images
    do not render: sparklines per metric and the last ``TABLE_RUNS`` runs with their cost."""
    svg = base64.b64encode(trend_svg(rows).encode()).decode()
    recent = rows[-TABLE_RUNS:]
    # "median TTFT", "p99 TPOT", "tok/s": the chart's series, named for a table.
    columns = [(legend if key == "output_throughput" else f"{legend} {title.split()[0]}", key)
               for title, series in PANELS for key, legend, _ in series]
    figures = [(name, lambda r, k=key: value(r, k), _num) for name, key in columns]
    figures.append(("cost/run", cost_per_run, _usd))
    out = [f"# Benchmark trend of {deployment}\n",
           f"![trend](data:image/svg+xml;base64,{svg})\n",
           f"## Last {len(recent)} runs\n",
           "| metric | trend | latest | min | max |", "|---|---|---|---|---|"]
    for name, getter, fmt in figures:
        vals = [getter(r) for r in recent]
        known = [v for v in vals if v is not None]
        trend = f"`{sparkline(vals)}`" if known else "-"
        latest, lo, hi = (vals[-1], min(known), max(known)) if known else (None, None, None)
        out.append(f"| {name} | {trend} | {_cell(latest, fmt)} | {_cell(lo, fmt)} | {_cell(hi, fmt)} |")
    out += ["", "| run | date | valid | " + " | ".join(name for name, _, _ in figures) + " |",
            "|---" * (len(figures) + 3) + "|"]
    for i, r in enumerate(recent, start=len(rows) - len(recent)):
        cells = [_cell(getter(r), fmt) for _, getter, fmt in figures]
        valid = "yes" if r.get("valid") else "no"
        out.append(f"| {i + 1} | {_date_label(r, i)} | {valid} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
