"""The ``--plot`` figure (matplotlib, an optional extra): latency distributions per configuration,
a panel per model and batch size with each median labelled at the median, and beside each model
its median latency per item against batch size, the legend outside the data."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnfold.bench.report import BenchReport, Latency, Speedup
from bnfold.errors import UsageError

NBSP = "\u00a0"

#: At most this many distribution panels (one model at one batch size) in a figure: more is
#: past reading and grows the image without bound (a folder of 1000 models would be 2500 inches
#: high, over a gigabyte of pixels to draw). Beyond it a model shows some of its batch sizes and
#: the figure says which (the panel per item beside it still has every one).
MAX_PANELS = 24

#: Vertical room of a panel: a title and an axis, and a row per configuration (inches).
PANEL_INCHES, ROW_INCHES = 1.3, 0.55


def _short(name: str, width: int) -> str:
    """A long file name without its middle."""
    if len(name) <= width:
        return name
    keep = width - 3
    return name[: keep - keep // 2] + "..." + name[-(keep // 2) :]


def _fit(text: str, width: int) -> str:
    """A title that fits its panel: wrapped into lines of ``width`` characters."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def plot(reports: BenchReport | Sequence[BenchReport], path: str | os.PathLike[str]) -> None:
    """Draw each model's latency distributions at each batch size (a box and violin per
    configuration, the median labelled at the median) and, when several batch sizes ran,
    median latency per item against batch size. Needs matplotlib."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [reports] if isinstance(reports, BenchReport) else list(reports)
    if not items:
        raise UsageError("--plot: nothing was benchmarked")
    fig = _figure(items)
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def _shown(items: Sequence[BenchReport]) -> list[tuple[BenchReport, list[int | None]]]:
    """The models and, for each, the batch sizes that get a distribution panel: all of them
    when they fit in ``MAX_PANELS``, else an even spread that keeps the smallest and largest
    (and the first ``MAX_PANELS`` models)."""
    models = list(items[:MAX_PANELS])
    sizes = [r.batch_sizes for r in models]
    if sum(len(s) for s in sizes) <= MAX_PANELS:
        return list(zip(models, sizes, strict=True))
    each = max(1, MAX_PANELS // len(models))
    return [(r, _spread(s, each)) for r, s in zip(models, sizes, strict=True)]


def _spread(values: list[int | None], count: int) -> list[int | None]:
    """``count`` of ``values``, evenly apart, the first and last among them."""
    if len(values) <= count:
        return values
    if count == 1:
        return values[:1]
    step = (len(values) - 1) / (count - 1)
    return [values[round(k * step)] for k in range(count)]


def _figure(items: list[BenchReport]) -> Any:
    """The figure (not saved): a row of panels per model and batch size shown."""
    import matplotlib.pyplot as plt

    chosen = _shown(items)
    with_batches = any(len(r.batch_sizes) > 1 for r, _ in chosen)
    cols = 2 if with_batches else 1
    panels = [
        (r, b, [x for x in r.runs if x.batch_size == b]) for r, sizes in chosen for b in sizes
    ]
    heights = [PANEL_INCHES + ROW_INCHES * len(runs) for _, _, runs in panels]
    # a note's line holds about 14 characters of 7-point text per inch of the figure
    notes = [line for n in _notes(items, chosen) for line in textwrap.wrap(n, 90 * cols)]
    fig = plt.figure(figsize=(6.5 * cols, sum(heights) + 0.4 + 0.2 * len(notes)))
    grid = fig.add_gridspec(len(panels), cols, height_ratios=heights)
    row = 0
    for report, sizes in chosen:
        for b in sizes:
            runs = panels[row][2]
            _distribution_panel(fig.add_subplot(grid[row, 0]), report, b, runs)
            row += 1
        if len(report.batch_sizes) > 1:
            _batch_panel(fig.add_subplot(grid[row - len(sizes) : row, 1]), report)
    rect = (0.0, 0.0, 1.0, 1.0)
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, color="#616161", va="bottom")
        rect = (0.0, (0.2 * len(notes) + 0.1) / fig.get_figheight(), 1.0, 1.0)
    fig.tight_layout(rect=rect)
    return fig


def _notes(
    items: list[BenchReport], chosen: list[tuple[BenchReport, list[int | None]]]
) -> list[str]:
    """What the figure leaves out, said in the figure."""
    notes = []
    for report, sizes in chosen:
        if len(sizes) < len(report.batch_sizes):
            notes.append(
                f"{_short(Path(report.model).name, 40)}: distributions at batch sizes "
                f"{', '.join(map(str, sizes))} of {', '.join(map(str, report.batch_sizes))} "
                "(every size in the panel per item)"
            )
    if len(chosen) < len(items):
        notes.append(f"the first {len(chosen)} of {len(items)} models are shown")
    return notes


def _distribution_panel(
    ax: Any, report: BenchReport, batch: int | None, runs: list[Latency]
) -> None:
    """One model at one batch size: a violin and a box per configuration, its median labelled
    at the median, the speedups in the title."""
    import numpy as np

    colors = {"original": "#9e9e9e", "folded": "#43a047"}
    several = len({x.provider for x in runs}) > 1
    data = [np.asarray(r.samples_ms or (r.median_ms,)) for r in runs]
    labels = [
        r.label + (f"\n{r.provider.removesuffix('ExecutionProvider')}" if several else "")
        for r in runs
    ]
    # the axis ends past the largest p95: one stall must not squeeze every distribution
    # into a line; what lies beyond is drawn at the edge and its maximum said in the panel
    p95 = [float(np.percentile(d, 95)) for d in data]
    low = min(float(np.percentile(d, 1)) for d in data)
    span = max(p95) - low or max(p95) or 1.0
    top = max(p95) + 0.35 * span
    left = max(0.0, low - 0.05 * span)
    clipped = [np.clip(d, None, top) for d in data]
    pos = np.arange(1, len(runs) + 1)
    parts = ax.violinplot(clipped, pos, showextrema=False, widths=0.8, **_horizontal())
    for body, r in zip(parts["bodies"], runs, strict=True):
        body.set_facecolor(colors.get(r.model, "#64b5f6"))
        body.set_alpha(0.35)
    ax.boxplot(
        clipped,
        positions=pos,
        widths=0.3,
        **_horizontal(),
        whis=(5, 95),
        showfliers=False,
        medianprops={"color": "black"},
    )
    ax.set_yticks(pos, labels, fontsize=8)
    ax.set_ylim(len(runs) + 0.55, 0.35)  # top down, room above the first box for its label
    ax.set_xlim(left, top)
    for y, r in zip(pos, runs, strict=True):
        # at the median, just above its box; aligned inwards only near the axis' ends (a
        # median reported outside its own samples' range is held at the edge)
        x = min(max(r.median_ms, left), top)
        where = (x - left) / (top - left)
        ax.text(
            x,
            y - 0.17,
            f"median {r.median_ms:.3g} ms",
            ha="left" if where < 0.12 else "right" if where > 0.88 else "center",
            va="bottom",
            fontsize=7,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.7, "lw": 0},
        )
    longest = max(float(d.max()) for d in data)
    if longest > top:
        ax.text(
            0.995,
            0.02,
            f"slowest run {longest:.3g} ms (cut)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="#757575",
        )
    ax.set_xlabel("latency per run (ms): box 25-75%, whiskers 5-95%", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    groups = [g for g in report.speedups if g.batch_size == batch]
    providers = len({g.provider for g in groups}) > 1
    # no-break spaces: a title wraps between speedups, never inside one
    parts_text = [
        (f"{g.provider.removesuffix('ExecutionProvider')} " if providers else "")
        + _speedup_text(k, v).replace(" ", NBSP)
        for g in groups
        for k, v in g.speedups.items()
    ]
    at_batch = f", batch{NBSP}{batch}" if batch is not None else ""
    name = _short(Path(report.model).name, 48)
    title = f"{name}{at_batch}: folded " + "; ".join(parts_text)
    if report.noisy:
        title += " (noisy)"
    ax.set_title(_fit(title, 60), fontsize=9, loc="left")


def _speedup_text(key: str, s: Speedup) -> str:
    """ "vs original 1.10x [1.08, 1.13]", or "vs ORT basic: no measurable difference (0.86x to
    1.20x)" when the interval holds 1."""
    against = "vs original" if key == "vs_original" else f"vs ORT {key[7:]}"
    if s.significant:
        return f"{against} {s}"
    lo, hi = s.ci95
    return f"{against}: no measurable difference ({lo:.2f}x to {hi:.2f}x)"


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes and violins: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _batch_panel(ax: Any, report: BenchReport) -> None:
    """Median latency per item (ms / batch size) against every batch size, with 95% intervals;
    the legend right of the axes, off the data."""
    sizes = [b for b in report.batch_sizes if b is not None]
    if len(sizes) < 2:
        ax.set_axis_off()
        return
    series: dict[str, list[Latency]] = {}
    for r in report.runs:
        if r.batch_size is not None:
            name = r.label + (
                f" {r.provider.removesuffix('ExecutionProvider')}"
                if len({x.provider for x in report.runs}) > 1
                else ""
            )
            series.setdefault(name, []).append(r)
    for name, runs in series.items():
        xs = [r.batch_size or 1 for r in runs]
        ys = [r.median_ms / (r.batch_size or 1) for r in runs]
        err = [
            [max(0.0, r.median_ms - r.ci95_ms[0]) / (r.batch_size or 1) for r in runs],
            [max(0.0, r.ci95_ms[1] - r.median_ms) / (r.batch_size or 1) for r in runs],
        ]
        style = "-" if runs[0].model == "folded" else "--"
        ax.errorbar(xs, ys, yerr=err, fmt=style + "o", markersize=3, capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size", fontsize=8)
    ax.set_ylabel("median ms per item", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    name = _short(Path(report.model).name, 48)
    ax.set_title(_fit(f"{name}: latency per item", 50), fontsize=9, loc="left")


def check_plot_available() -> None:
    """Fail before a long benchmark if ``--plot`` cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'bnfold[plot]'",
        ) from None
