"""How ``bnfold bench`` shows its results to a person: per-model tables (narrower ones that cut
nothing on a narrow terminal), the speedups with their intervals ("no measurable difference"
when an interval holds 1), and the baseline comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold.cli.ui import Ui, escape, shorten
from bnfold.cli.ui import table as _table

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.bench.baseline import BaselineComparison, Change
    from bnfold.bench.report import BenchReport, Speedup


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]"


def render(ui: Ui, report: BenchReport) -> None:
    """One model: its table, the speedup lines, and why anything was left out (warnings are
    printed even with --quiet)."""
    state = (
        f"noisy: {report.max_seconds:g} s budget ended before every interval was within "
        f"+-{report.target_ci:.0%}"
        if report.noisy
        else f"within +-{report.target_ci:.0%}"
    )
    line = f"{report.model}: {report.rounds} rounds in {report.seconds:.1f} s, {state}"
    for skip in report.skipped_batch_sizes:
        ui.warn(f"{report.model}: --batch-size {skip['batch_size']} skipped: {skip['reason']}")
    if ui.quiet:
        if report.noisy:
            ui.warn(line)
        return
    ui.show(lambda: _fitting_table(ui, report))
    for g in report.speedups:
        where = ""
        if len(report.speedups) > 1:
            where = f" ({g.provider.removesuffix('ExecutionProvider')}, batch {g.batch_size})"
        parts = [_speedup_text(key, s) for key, s in g.speedups.items()]
        text = f"folded{where}: " + ", ".join(parts)
        if len(text) <= ui.width:
            ui.say(escape(text))
        else:  # one speedup a line: a narrow terminal breaks between them, not inside one
            ui.say(escape(f"folded{where}:"))
            for part in parts:
                ui.say(escape(part), indent=2)
    if report.noisy:
        ui.warn(line + " (try --max-seconds, --threads 1, or a quieter machine)")
    else:
        ui.say(escape(line))
    for note in report.notes:
        ui.say(f"note: {escape(note)}")


def _speedup_text(key: str, s: Speedup) -> str:
    """A speedup as the summary says it: "1.10x [1.08, 1.13] the original's speed", or, when
    its 95% interval holds 1, "no measurable difference from the original (0.78x to 2.24x)":
    a ratio whose interval allows both slower and faster is no speedup to quote."""
    original = key == "vs_original"
    if s.significant:
        return f"{s} " + ("the original's speed" if original else f"ORT {key[7:]}")
    name = "the original" if original else f"ORT {key[7:]}"
    lo, hi = s.ci95
    return f"no measurable difference from {name} ({lo:.2f}x to {hi:.2f}x)"


def _fitting_table(ui: Ui, report: BenchReport) -> Table:
    """The table with a column per number when it fits the terminal; narrower, the models'
    sizes and node counts go below it and the levels are named short, so that the
    configurations and intervals are not cut."""
    wide = _bench_table(report)
    return wide if _fits(ui, wide) else _narrow_table(report)


def _fits(ui: Ui, table: Table) -> bool:
    """Whether ``table`` fits the terminal without rich cutting or wrapping a cell."""
    from rich.measure import Measurement

    console = ui.out
    # measured without the terminal's limit: the width the table needs to cut nothing
    unbounded = console.options.update_width(10_000)
    return Measurement.get(console, unbounded, table).maximum <= ui.width


def _title(report: BenchReport) -> str:
    shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in report.input_shapes.items())
    return (
        f"{report.model}  ({shapes}; {report.rounds} rounds after {report.warmup} warm-up, "
        f"threads: {report.threads or 'default'})"
    )


def _narrow_table(report: BenchReport) -> Table:
    """The runs for a narrow terminal: "original @ basic", latencies and intervals; the models'
    nodes, BatchNormalization count and size in the caption."""
    table = _table(_title(report))
    table.caption = escape(
        "; ".join(
            f"{name}: {stats.nodes} nodes, {stats.batchnorms} BN, {stats.size_bytes / 1e6:.1f} MB"
            for name, stats in (("original", report.original), ("folded", report.folded))
        )
    )
    table.caption_justify = "left"
    several = len({r.provider for r in report.runs}) > 1
    table.add_column("configuration", no_wrap=True)
    if several:
        table.add_column("provider", no_wrap=True)
    for column in ("batch", "median ms", "95% CI", "p90 ms", "session ms"):
        table.add_column(column, justify="right")
    for r in report.runs:
        row = [f"{r.model} @ {r.optimization}"]
        if several:
            row.append(r.provider.removesuffix("ExecutionProvider"))
        row += [
            "-" if r.batch_size is None else str(r.batch_size),
            f"{r.median_ms:.3f}",
            _interval(*r.ci95_ms),
            f"{r.p90_ms:.3f}",
            f"{r.session_ms:.1f}",
        ]
        table.add_row(*row)
    return table


def _bench_table(report: BenchReport) -> Table:
    table = _table(_title(report))
    several = len({r.provider for r in report.runs}) > 1
    columns = ["configuration"]
    if several:
        columns.append("provider")
    columns += ["batch", "nodes", "BN", "MB", "session ms", "median ms", "95% CI", "p90 ms"]
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("configuration", "provider") else "right"
        )
    for r in report.runs:
        stats = report.folded if r.model == "folded" else report.original
        row = [r.label]
        if several:
            row.append(r.provider.removesuffix("ExecutionProvider"))
        row += [
            "-" if r.batch_size is None else str(r.batch_size),
            str(stats.nodes),
            str(stats.batchnorms),
            f"{stats.size_bytes / 1e6:.1f}",
            f"{r.session_ms:.1f}",
            f"{r.median_ms:.3f}",
            _interval(*r.ci95_ms),
            f"{r.p90_ms:.3f}",
        ]
        table.add_row(*row)
    return table


def render_baseline(ui: Ui, c: BaselineComparison) -> None:
    """The comparison with a baseline: a table when it fits the terminal, else lines per
    configuration, the verdict first, so that a narrow terminal cuts none of it."""
    if not ui.reports:
        return
    table = baseline_table(c)
    if _fits(ui, table):
        ui.show(lambda: table)
        return
    ui.say(escape(_baseline_title(c)))
    for ch in c.changes:
        style = _VERDICT_STYLE[ch.verdict]
        verdict = f"{ch.verdict:<6}"
        verdict = f"[{style}]{verdict}[/]" if style else verdict
        batch = "" if ch.batch_size is None else f", batch {ch.batch_size}"
        what = shorten(f"{ch.model} {_change_label(ch)}{batch}", max(8, ui.width - 10))
        ui.say(f"  {verdict}  {escape(what)}")
        numbers = (
            f"{ch.baseline_ms:.3f} -> {ch.median_ms:.3f} ms, {ch.ratio - 1:+.1%} "
            f"[{ch.ci95[0] - 1:+.1%}, {ch.ci95[1] - 1:+.1%}]"
        )
        ui.say(escape(numbers), indent=10)
        if relative := _relative(ch):
            ui.say(escape(f"vs original {relative}"), indent=10)
    for label in c.unmatched:
        ui.say(escape(f"not in the baseline: {label}"), indent=2)


_VERDICT_STYLE = {"slower": "red", "faster": "green", "same": ""}


def _baseline_title(c: BaselineComparison) -> str:
    how = "; folded judged relative to the original" if c.relative else ""
    return f"against {c.path} (now / then; slower only beyond +{c.max_slowdown:.0%}{how})"


def _change_label(ch: Change) -> str:
    return f"{ch.run} @ {ch.optimization} {ch.provider.removesuffix('ExecutionProvider')}"


def baseline_table(c: BaselineComparison) -> Table:
    table = _table(_baseline_title(c))
    columns = ("model", "configuration", "batch", "then ms", "now ms", "change", "95% CI")
    for column in (*columns, "vs original"):
        table.add_column(
            column, justify="left" if column in ("model", "configuration") else "right"
        )
    table.add_column("verdict")
    style = _VERDICT_STYLE
    for ch in c.changes:
        verdict = f"[{style[ch.verdict]}]{ch.verdict}[/]" if style[ch.verdict] else ch.verdict
        table.add_row(
            escape(ch.model),
            escape(_change_label(ch)),
            "-" if ch.batch_size is None else str(ch.batch_size),
            f"{ch.baseline_ms:.3f}",
            f"{ch.median_ms:.3f}",
            f"{ch.ratio - 1:+.1%}",
            f"[{ch.ci95[0] - 1:+.1%}, {ch.ci95[1] - 1:+.1%}]",
            _relative(ch),
            verdict,
        )
    for label in c.unmatched:
        table.add_row(escape(label), "not in the baseline", "", "", "", "", "", "", "")
    return table


def _relative(ch: Change) -> str:
    if ch.relative is None or ch.relative_ci95 is None:
        return ""
    lo, hi = ch.relative_ci95
    return f"{ch.relative - 1:+.1%} [{lo - 1:+.1%}, {hi - 1:+.1%}]"
