"""The report for people: what fold, inspect, check and verify print on stdout (never the JSON).

Every name that comes from a model or a command line goes through ``escape``/``printable``.
Nothing is wider than the terminal (or COLUMNS): names are shortened in the middle, reason codes
are never cut (``decisions``: a table, lines below 100 columns, or a summary by reason). A fold that
leaves many nodes unfolded is summarised by reason (``-v`` and ``inspect`` list every node).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnfold.cli.decisions import WIDE, decisions
from bnfold.cli.record import show_record
from bnfold.cli.ui import escape, shorten
from bnfold.cli.ui import table as _table
from bnfold.fold.report import KIND_NAMES

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.api import FileFoldResult
    from bnfold.batch import Mode, Outcome
    from bnfold.cli.ui import Ui
    from bnfold.fold.report import FoldReport
    from bnfold.verification.report import VerifyReport


def counts(report: FoldReport, verb: str) -> str:
    """``folded 11 of 15 BatchNormalization, 2 of 2 scale Mul/Add``: the one way every command
    counts (kinds with none are left out)."""
    parts = [
        f"{t.folded} of {t.total} {KIND_NAMES[kind]}"
        for kind, t in report.tally().items()
        if t.total
    ]
    if not parts:
        return "no BatchNormalization or scale Mul/Add found"
    return f"{verb} " + ", ".join(parts)


def size(n: int) -> str:
    """Bytes as people read them (decimal units, as file managers show)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def summary(result: FileFoldResult, verb: str = "folded") -> str:
    """The counts, the node counts, and the sizes when a model was written."""
    report = result.report
    line = f"{counts(report, verb)}; nodes {report.nodes_before} -> {report.nodes_after}"
    if result.size_before is not None and result.size_after is not None:
        line += f"; {size(result.size_before)} -> {size(result.size_after)}"
    return line


def growth(result: FileFoldResult) -> str | None:
    """Why the written model is more than twice the size of the input, or None."""
    before, after = result.size_before, result.size_after
    if not before or after is None or after <= 2 * before:
        return None
    report = result.report
    why = []
    if report.materialized_bytes:
        why.append(
            f"{size(report.materialized_bytes)} of folded weights that constant subgraphs "
            "computed at run time are now stored in the model"
        )
    if report.copied_bytes:
        why.append(
            f"{size(report.copied_bytes)} of folded copies of weights that other layers "
            "share (they keep the original)"
        )
    if result.record is not None and result.written:
        from bnfold.model.record import encode  # only now: --help imports no protobuf

        recorded = len(encode(result.record).encode())
        if recorded * 2 > after - before:  # a small model: the record is much of what it gained
            why.append(f"the fold record in its metadata takes {size(recorded)}")
    if not why:
        why.append("the new biases and folded weights take more room than the nodes they replace")
    return f"the model grew {after / before:.1f}x: " + "; ".join(why)


def verification_line(v: VerifyReport) -> str:
    """``verification passed: onnxruntime, 1 sample, worst error 3.81e-06 in 'y'`` (a failure
    also names the tolerances it missed)."""
    worst = next(iter(v.worst(1)), None)
    where = f"{v.backend}, {v.samples} sample{'s' if v.samples != 1 else ''}"
    if v.enlarged is not None:  # the default shapes did not run the original: say which did
        where += ", inputs " + ", ".join(
            f"{escape(name)} {'x'.join(map(str, dims)) or 'scalar'}"
            for name, dims in v.input_shapes.items()
        )
    if v.status == "unverified":
        return f"[yellow]unverified[/yellow]: {escape(v.reason or '')}"
    if worst is None:
        return f"verification {v.status} ({where})"
    line = f"{where}, worst error {worst.max_abs:.3g} in '{escape(worst.name)}'"
    if v.status == "passed":
        return f"verification [green]passed[/green]: {line}"
    return f"verification [red]{v.status}[/red]: {line} (rtol {worst.rtol:g}, atol {worst.atol:g})"


def comparisons(ui: Ui, v: VerifyReport, title: str) -> None:
    """Each output's errors against its tolerance: a table from ``WIDE`` columns, else two lines
    an output (its name, type, shape and verdict; then the numbers), so that nothing is cut."""
    if not ui.reports:
        return
    if ui.width >= WIDE:
        ui.show(lambda: comparison_table(v, title))
        return
    ui.say(escape(title))
    for o in v.outputs:
        verdict = "[green]ok[/green]" if o.passed else f"[red]{o.mismatched} differ[/red]"
        shape = "x".join(str(d) for d in o.shape) or "scalar"
        name = shorten(o.name, max(8, ui.width - 30))
        ui.say(f"  '{escape(name)}' {o.dtype} {shape}  {verdict}")
        ui.say(
            f"max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, mean abs {o.mean_abs:.3g}, "
            f"needs atol {o.min_atol:.3g} (rtol {o.rtol:g}, atol {o.atol:g})",
            indent=6,
        )


def comparison_table(v: VerifyReport, title: str) -> Table:
    table = _table(title)
    table.add_column("output", no_wrap=True)
    for col in ("dtype", "shape", "max abs", "max rel", "mean abs", "needs atol"):
        table.add_column(col, justify="right" if col not in ("output", "dtype") else "left")
    table.add_column("tolerance")
    table.add_column("result", no_wrap=True)
    for o in v.outputs:
        table.add_row(
            escape(shorten(o.name, 24)),
            o.dtype,
            "x".join(str(d) for d in o.shape),
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            f"{o.mean_abs:.3g}",
            f"{o.min_atol:.3g}",
            f"rtol {o.rtol:g}, atol {o.atol:g}",
            "[green]ok[/green]" if o.passed else f"[red]{o.mismatched} differ[/red]",
        )
    return table


def _tally_cell(report: FoldReport) -> str:
    short = {"batchnorm": "BN", "scale": "scale", "bias": "bias"}
    parts = [f"{t.folded}/{t.total} {short[k]}" for k, t in report.tally().items() if t.total]
    return ", ".join(parts) or "-"


def batch_table(outcomes: Sequence[Outcome], mode: Mode, width: int) -> Table:
    table = _table(f"bnfold {mode}: {len(outcomes)} models")
    table.add_column("model", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("folded" if mode == "fold" else "foldable", no_wrap=True)
    if mode == "fold":
        table.add_column("nodes", justify="right", no_wrap=True)
        table.add_column("max abs error", justify="right", no_wrap=True)
    else:
        table.add_column("not folded", overflow="fold")
    room = max(16, width - (70 if mode == "fold" else 60))
    for o in outcomes:
        style = {0: "green", 1: "red"}.get(o.exit_code, "red")
        if o.status in ("unverified", "unchanged", "inspected", "clean"):
            style = "yellow" if o.status == "unverified" else "green"
        r = o.result.report if o.result else None
        cells = [escape(shorten(str(o.input), room)), f"[{style}]{o.status}[/{style}]"]
        cells.append(_tally_cell(r) if r is not None else "-")
        if mode == "fold":
            cells.append(f"{r.nodes_before} -> {r.nodes_after}" if r else "-")
            v = o.result.verification if o.result else None
            cells.append(f"{max((x.max_abs for x in v.outputs), default=0.0):.3g}" if v else "-")
        else:
            reasons = ", ".join(f"{k} x{n}" for k, n in r.reasons().items()) if r else ""
            cells.append(escape(reasons))
        table.add_row(*cells)
    return table


def remaining(report: FoldReport) -> str:
    """``13 foldable nodes remain (11 BatchNormalization, 2 scale Mul/Add)``: what ``check``
    fails on, in the words of every count (plain text); "" when nothing does."""
    gated = report.gated()
    if not gated:
        return ""
    kinds: dict[str, int] = {}
    for d in gated:
        name = KIND_NAMES[report.kind(d)]
        kinds[name] = kinds.get(name, 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in kinds.items())
    nodes = "node remains" if len(gated) == 1 else "nodes remain"
    return f"{len(gated)} foldable {nodes} ({what})"


def check_line(o: Outcome) -> str:
    """``MODEL: clean`` or ``MODEL: N foldable nodes remain (...)``, escaped."""
    left = remaining(o.result.report) if o.result is not None else ""
    return f"{escape(str(o.input))}: {escape(left) if left else 'clean'}"


def render_one(o: Outcome, mode: Mode, ui: Ui) -> None:
    """The report of one model (a batch shows a table of them instead)."""
    if o.result is None:
        return
    result = o.result
    report = result.report
    name = str(o.input)
    show_record(o, mode, ui)  # inspect, check: where a folded model came from
    if mode == "check":
        if o.status == "foldable":
            decisions(ui, report.gated(), f"{name}: still foldable", group=True)
            ui.tell(check_line(o))  # a failing gate says so even with -q
        else:
            ui.say(check_line(o))
        return
    if mode == "inspect":
        decisions(ui, report.decisions, name)
        ui.say(escape(f"{name}: {summary(result, 'foldable')}"))
        return
    if ui.verbose:
        decisions(ui, report.decisions, name)
    elif report.skipped:
        skipped = [d for d in report.decisions if not d.folded]
        decisions(ui, skipped, f"{name}: {len(skipped)} not folded", group=True)
    ui.say(escape(summary(result)))  # one model: the "wrote" line below names the file
    note = growth(result)
    if note:
        ui.say(f"note: {escape(note)}")
    v = result.verification
    if v is not None:
        if v.status == "failed":
            comparisons(ui, v, "worst outputs")
        ui.say(verification_line(v))
    elif report.changed and result.written:
        ui.say("verification skipped (--no-verify)")
    for path in result.written:
        ui.say(f"wrote {escape(str(path))}")
    if o.status == "unchanged" and not result.written:
        ui.say(f"{escape(name)} left as it was (nothing to fold)")
