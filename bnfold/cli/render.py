"""Tables and lines for people: what the commands print on stderr (never the JSON).

Every name that comes from a model or a command line goes through ``escape``/``printable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnfold.cli.record import show_record
from bnfold.cli.ui import escape
from bnfold.cli.ui import table as _table

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.batch import Mode, Outcome
    from bnfold.cli.ui import Ui
    from bnfold.fold.report import FoldReport
    from bnfold.verification.report import VerifyReport


def decision_table(report: FoldReport, title: str, *, only_skipped: bool = False) -> Table:
    table = _table(title)
    table.add_column("node", overflow="fold")
    table.add_column("graph", overflow="fold")
    table.add_column("after")
    table.add_column("result")
    table.add_column("why", overflow="fold")
    for d in report.decisions:
        if only_skipped and d.folded:
            continue
        producer = d.producer or "-"
        if d.through:
            producer += " via " + ", ".join(d.through)
        result = "[green]folded[/green]" if d.folded else f"[yellow]{d.reason}[/yellow]"
        label = d.node or f"-> {d.output}"
        table.add_row(
            escape(label if d.op == "BatchNormalization" else f"{d.op} {label}"),
            escape(d.graph),
            escape(producer),
            result,
            escape(d.message),
        )
    return table


def summary(report: FoldReport, verb: str = "folded") -> str:
    line = f"{report.bn_folded} of {report.bn_total} BatchNormalization"
    scales = report.total - report.bn_total
    if scales:
        line += f" and {report.folded - report.bn_folded} of {scales} scale Mul/Add"
    line += f" {verb}; nodes {report.nodes_before} -> {report.nodes_after}"
    if report.skipped:
        line += "; not folded: " + ", ".join(f"{k} x{v}" for k, v in report.reasons().items())
    return line


def verification_line(v: VerifyReport) -> str:
    worst = next(iter(v.worst(1)), None)
    where = f"{v.backend}, {v.samples} sample{'s' if v.samples != 1 else ''}"
    if v.status == "unverified":
        return f"[yellow]unverified[/yellow]: {escape(v.reason or '')}"
    if worst is None:
        return f"verification {v.status} ({where})"
    color = "green" if v.status == "passed" else "red"
    return (
        f"verification [{color}]{v.status}[/{color}] ({where}): {len(v.outputs)} output(s), "
        f"worst max abs error {worst.max_abs:.3g} in '{escape(worst.name)}' "
        f"(rtol {worst.rtol:g}, atol {worst.atol:g})"
    )


def comparison_table(v: VerifyReport, title: str) -> Table:
    table = _table(title)
    for col in ("output", "dtype", "shape", "max abs", "max rel", "mean abs", "needs atol"):
        table.add_column(col, justify="right" if col not in ("output", "dtype") else "left")
    table.add_column("tolerance")
    table.add_column("result")
    for o in v.outputs:
        table.add_row(
            escape(o.name),
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


def batch_table(outcomes: Sequence[Outcome], mode: Mode) -> Table:
    table = _table(f"bnfold {mode}: {len(outcomes)} models")
    table.add_column("model", overflow="fold")
    table.add_column("status")
    table.add_column("BN folded" if mode == "fold" else "BN foldable", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("max abs error" if mode == "fold" else "not folded", justify="right")
    for o in outcomes:
        style = {0: "green", 1: "red"}.get(o.exit_code, "red")
        if o.status in ("unverified", "unchanged", "inspected", "clean"):
            style = "yellow" if o.status == "unverified" else "green"
        r = o.result.report if o.result else None
        counts = "-"
        if r is not None:
            counts = f"{r.bn_folded}/{r.bn_total}"
            if r.folded > r.bn_folded:
                counts += f" +{r.folded - r.bn_folded} Mul/Add"
        nodes = f"{r.nodes_before} -> {r.nodes_after}" if r and mode == "fold" else "-"
        if mode != "fold":
            last = ", ".join(f"{k} x{v}" for k, v in r.reasons().items()) if r else ""
        else:
            v = o.result.verification if o.result else None
            last = f"{max((x.max_abs for x in v.outputs), default=0.0):.3g}" if v else "-"
        table.add_row(
            escape(str(o.input)), f"[{style}]{o.status}[/{style}]", counts, nodes, escape(last)
        )
    return table


def check_line(o: Outcome) -> str:
    """``MODEL: clean`` or ``MODEL: N foldable node(s) remain (...)``, escaped."""
    report = o.result.report if o.result is not None else None
    gated = report.gated() if report is not None else ()
    if not gated:
        return f"{escape(str(o.input))}: clean"
    kinds: dict[str, int] = {}
    for d in gated:
        kinds[d.op] = kinds.get(d.op, 0) + 1
    what = ", ".join(f"{op} x{n}" for op, n in kinds.items())
    return f"{escape(str(o.input))}: {len(gated)} foldable node(s) remain ({escape(what)})"


def not_folded_title(o: Outcome, report: FoldReport) -> str:
    """The title of a fold's table of what stayed: how many of how many."""
    return f"{o.input}: {report.skipped} of {report.total} not folded"


def render_one(o: Outcome, mode: Mode, ui: Ui) -> None:
    """The tables and lines for one model (a batch shows a table of them instead)."""
    if o.result is None:
        return
    report = o.result.report
    show_record(o, mode, ui)  # inspect, check: where a folded model came from
    if mode == "check":
        if o.status == "foldable":
            ui.show(lambda: decision_table(report, str(o.input)))
            ui.tell(check_line(o))  # a failing gate says so even with -q
        else:
            ui.say(check_line(o))
        return
    if ui.quiet:  # everything below is for people; --quiet drops it
        return
    if mode == "inspect":
        ui.show(lambda: decision_table(report, str(o.input)))
        ui.say(escape(summary(report, "foldable")))
        return
    if report.skipped:
        title = not_folded_title(o, report)
        ui.show(lambda: decision_table(report, title, only_skipped=True))
    ui.say(escape(summary(report)))
    v = o.result.verification
    if v is not None:
        if v.status == "failed":
            ui.show(lambda: comparison_table(v, "worst outputs"))
        ui.say(verification_line(v))
    elif report.changed and o.result.written:
        ui.say("verification skipped (--no-verify)")
    for path in o.result.written:
        ui.say(f"wrote {escape(str(path))}")
    if o.status == "unchanged" and not o.result.written:
        ui.say(f"{escape(str(o.input))} left as it was (nothing to fold)")
