"""The ``--plot`` figure (matplotlib, an optional extra): latency distributions per configuration,
medians labelled at the median, and a panel per batch size."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnfold.bench.report import BenchReport, Latency
from bnfold.errors import UsageError

NBSP = "\u00a0"


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
    """Draw each model's latency distributions (a box and violin per configuration, median
    labelled) and, when several batch sizes ran, median latency per item against batch size.
    Needs matplotlib."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    items = [reports] if isinstance(reports, BenchReport) else list(reports)
    if not items:
        raise UsageError("--plot: nothing was benchmarked")
    with_batches = any(len(r.batch_sizes) > 1 for r in items)
    cols = 2 if with_batches else 1
    first = [[x for x in r.runs if x.batch_size == r.batch_sizes[0]] for r in items]
    heights = [1.2 + 0.45 * len(runs) for runs in first]
    fig, axes = plt.subplots(
        len(items),
        cols,
        figsize=(6.5 * cols, sum(heights) + 0.4),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    colors = {"original": "#9e9e9e", "folded": "#43a047"}
    for row, (report, runs) in enumerate(zip(items, first, strict=True)):
        ax = axes[row][0]
        data = [np.asarray(r.samples_ms or (r.median_ms,)) for r in runs]
        labels = [
            r.label
            + (
                f"\n{r.provider.removesuffix('ExecutionProvider')}"
                if len({x.provider for x in runs}) > 1
                else ""
            )
            for r in runs
        ]
        # the axis ends past the largest p95: one stall must not squeeze every distribution
        # into a line; what lies beyond is drawn at the edge and its maximum said in the label
        p95 = [float(np.percentile(d, 95)) for d in data]
        low = min(float(np.percentile(d, 1)) for d in data)
        span = max(p95) - low or max(p95) or 1.0
        top = max(p95) + 0.35 * span
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
        ax.invert_yaxis()
        ax.set_xlim(max(0.0, low - 0.05 * span), top)
        for y, r, right in zip(pos, runs, p95, strict=True):
            ax.annotate(
                f"median {r.median_ms:.3g} ms",
                (right, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
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
        speed = report.speedup
        # no-break spaces: a title wraps between speedups, never inside one
        parts_text = [
            f"{'vs original' if k == 'vs_original' else 'vs ORT ' + k[7:]} {v}".replace(" ", NBSP)
            for k, v in speed.items()
        ]
        batch = f", batch {runs[0].batch_size}" if runs[0].batch_size is not None else ""
        name = _short(Path(report.model).name, 48)
        title = f"{name}{batch}: folded speedup " + ", ".join(parts_text)
        if report.noisy:
            title += " (noisy)"
        ax.set_title(_fit(title, 60), fontsize=9, loc="left")
        if with_batches:
            _batch_panel(axes[row][1], report)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes and violins: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _batch_panel(ax: Any, report: BenchReport) -> None:
    """Median latency per item (ms / batch size) against batch size, with 95% intervals."""
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
    ax.set_xlabel("batch size", fontsize=8)
    ax.set_ylabel("median ms per item", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    name = _short(Path(report.model).name, 48)
    ax.set_title(_fit(f"{name}: latency per item", 60), fontsize=9, loc="left")


def check_plot_available() -> None:
    """Fail before a long benchmark if ``--plot`` cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'bnfold[plot]'",
        ) from None
