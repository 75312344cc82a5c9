"""The benchmark history as a trend: a matplotlib chart, a plain-text fallback with
sparklines, what each run cost, and the headline figures a registered endpoint keeps.

Prefect's UI renders ``data:image/...`` images inside markdown artifacts (both UIs that
prefect 3.8.8 ships: ui-v2's markdown component allows ``^data:image/`` as an img src,
see prefect/server/ui-v2/assets/lazy-markdown-*.js), and it has nowhere to serve a file
from, so the chart travels in the artifact as a PNG data URI, with the tables under it.

Rows are ``gate.history_row`` dicts, oldest first. They come back from a table artifact,
so any figure may be missing, NaN, an empty string or a number as text.
"""

from __future__ import annotations

import base64
import io
import math
import time
from datetime import datetime

MAX_CHART_RUNS = 50
TABLE_RUNS = 10
SPARKS = "▁▂▃▄▅▆▇█"

# (panel title, [(history key, legend, colour)]): one panel per unit.
PANELS = (
    ("TTFT (ms)", [("median_ttft_ms", "median", "#1f77b4"), ("p99_ttft_ms", "p99", "#ff7f0e")]),
    ("TPOT (ms)", [("median_tpot_ms", "median", "#1f77b4"), ("p99_tpot_ms", "p99", "#ff7f0e")]),
    ("output throughput (tok/s)", [("output_throughput", "tok/s", "#2ca02c")]),
)

# Chart size in inches at DPI: 640 x 480 pixels, readable in the UI's artifact pane.
FIG_W, FIG_H, DPI = 6.4, 4.8, 100


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


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _label_positions(n: int) -> list[int]:
    """At most ~6 date labels, always the first and the last run."""
    step = max(1, math.ceil(n / 6))
    return [*(i for i in range(0, n - 1, step) if n - 1 - i >= step), n - 1] if n else []


def trend_figure(rows: list[dict]):
    """The last ``MAX_CHART_RUNS`` runs as a matplotlib Figure: one panel per unit, one
    line per series over the run index (a missing value is NaN, which breaks the line)."""
    # The object API with the Agg canvas: no pyplot global state, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = rows[-MAX_CHART_RUNS:]
    fig = Figure(figsize=(FIG_W, FIG_H), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True, squeeze=False)[:, 0]
    if not rows:
        fig.text(0.5, 0.5, "no benchmark runs yet", ha="center", va="center")
    xs = list(range(len(rows)))
    for ax, (title, series) in zip(axes, PANELS, strict=True):
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        ax.grid(True, color="#eee")
        ax.tick_params(labelsize=8)
        for key, legend, colour in series:
            ys = [math.nan if (v := value(r, key)) is None else v for r in rows]
            ax.plot(xs, ys, color=colour, marker="o", markersize=3, linewidth=1.5, label=legend, gid=key)
        if rows:
            # On the title's line, right-aligned: never over the data.
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
                      ncols=len(series), borderaxespad=0.1, handlelength=1.5)
    if rows:
        labels = _label_positions(len(rows))
        axes[-1].set_xticks(labels, [_date_label(rows[i], i) for i in labels])
        axes[-1].set_xlim(-0.5, len(rows) - 0.5)  # one run sits mid-chart, not on the axis
    return fig


def trend_png(rows: list[dict]) -> bytes:
    """``trend_figure`` as PNG bytes (no timestamp in its metadata: same rows, same bytes)."""
    buf = io.BytesIO()
    trend_figure(rows).savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


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
    png = base64.b64encode(trend_png(rows)).decode()
    recent = rows[-TABLE_RUNS:]
    # "median TTFT", "p99 TPOT", "tok/s": the chart's series, named for a table.
    columns = [(legend if key == "output_throughput" else f"{legend} {title.split()[0]}", key)
               for title, series in PANELS for key, legend, _ in series]
    figures = [(name, lambda r, k=key: value(r, k), _num) for name, key in columns]
    figures.append(("cost/run", cost_per_run, _usd))
    out = [f"# Benchmark trend of {deployment}\n",
           f"![Benchmark trend of {deployment}](data:image/png;base64,{png})\n",
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
