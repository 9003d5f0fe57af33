"""The report for people: what fold, inspect, check and verify print on stdout (never the JSON).

Every name that comes from a model or a command line goes through ``escape``/``printable``.
Nothing is wider than the terminal (or COLUMNS): names are shortened in the middle, reason codes
are never cut, and below ``WIDE`` columns each message goes on lines of its own. A fold that
leaves many nodes unfolded is summarised by reason (``-v`` and ``inspect`` list every node).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnfold.cli.ui import escape, shorten
from bnfold.cli.ui import table as _table
from bnfold.fold.report import KIND_NAMES

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.api import FileFoldResult
    from bnfold.batch import Mode, Outcome
    from bnfold.cli.ui import Ui
    from bnfold.fold.report import BNDecision, FoldReport
    from bnfold.verification.report import VerifyReport

#: More rows than this are summarised by reason on a plain fold or check (-v lists them all).
GROUP_FROM = 10
#: From this many columns decisions are a table; narrower, each message gets lines of its own.
WIDE = 100


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
        line += f"; size {size(result.size_before)} -> {size(result.size_after)}"
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
    if not why:
        why.append("the new biases and folded weights take more room than the nodes they replace")
    return f"the model grew {after / before:.1f}x: " + "; ".join(why)


def _label(d: BNDecision) -> str:
    label = d.node or f"-> {d.output}"
    return label if d.op == "BatchNormalization" else f"{d.op} {label}"


def _after(d: BNDecision) -> str:
    producer = d.producer or "-"
    return producer + (" via " + ", ".join(d.through) if d.through else "")


def _result(d: BNDecision) -> str:
    return "[green]folded[/green]" if d.folded else f"[yellow]{d.reason}[/yellow]"


def decisions(ui: Ui, rows: Sequence[BNDecision], title: str, *, group: bool = False) -> None:
    """Print ``rows``: a table, lines for a narrow terminal, or (``group``, many rows, no -v) a
    summary by reason."""
    if not ui.reports or not rows:
        return
    if group and len(rows) > GROUP_FROM and not ui.verbose:
        _by_reason(ui, rows, title)
    elif ui.width >= WIDE:
        ui.say(escape(title))
        ui.show(lambda: _decision_table(rows))
    else:
        _decision_lines(ui, rows, title)


def _decision_table(rows: Sequence[BNDecision]) -> Table:
    from rich.table import Table

    table = Table()
    table.add_column("node", no_wrap=True)
    graphs = any(d.graph != "main" for d in rows)
    if graphs:
        table.add_column("graph", no_wrap=True)
    table.add_column("after", no_wrap=True)
    width = max(len(d.reason) for d in rows)
    table.add_column("result", no_wrap=True, min_width=width)
    table.add_column("why", overflow="fold", ratio=1)
    for d in rows:
        cells = [escape(shorten(_label(d), 30))]
        if graphs:
            cells.append(escape(shorten(d.graph, 16)))
        cells += [escape(shorten(_after(d), 24)), _result(d), escape(d.message)]
        table.add_row(*cells)
    return table


def _decision_lines(ui: Ui, rows: Sequence[BNDecision], title: str) -> None:
    ui.say(escape(title))
    for d in rows:
        where = (f"after {_after(d)}" if d.producer else "") + (
            f" in {d.graph}" if d.graph != "main" else ""
        )
        where = shorten(where.strip(), 30)
        node = shorten(_label(d), max(8, ui.width - 8 - len(d.reason) - len(where)))
        ui.say(f"  {escape(node)}  {_result(d)}" + (f"  ({escape(where)})" if where else ""))
        ui.say(escape(d.message), indent=6)


def _by_reason(ui: Ui, rows: Sequence[BNDecision], title: str) -> None:
    """One entry per reason: how many, one example, and the fix where there is one."""
    from bnfold.fold.rules.reasons import HINTS, Reason

    _CODES = {r.value for r in Reason}
    groups: dict[str, list[BNDecision]] = {}
    for d in rows:
        groups.setdefault(d.reason, []).append(d)
    ui.say(escape(f"{title}, by reason (-v lists each node):"))
    width = max(len(code) for code in groups)
    room = max(20, 2 * (ui.width - 6))  # an example's message: two lines at most
    for code, found in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        first = found[0]
        example = shorten(_label(first), max(8, ui.width - width - 20))
        color = "green" if first.folded else "yellow"
        ui.say(f"  [{color}]{code:<{width}}[/{color}]  x{len(found):<4} e.g. {escape(example)}")
        message = first.message if len(first.message) <= room else first.message[: room - 1]
        if message != first.message:
            message += "\u2026"
        ui.say(escape(message), indent=6)
        hint = HINTS.get(Reason(code)) if code in _CODES else None
        if hint:
            ui.say(escape(f"fix: {hint}"), indent=6)


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


def check_line(o: Outcome) -> str:
    """``MODEL: clean`` or ``MODEL: N foldable nodes remain (...)``, escaped."""
    report = o.result.report if o.result is not None else None
    gated = report.gated() if report is not None else ()
    if report is None or not gated:
        return f"{escape(str(o.input))}: clean"
    kinds: dict[str, int] = {}
    for d in gated:
        name = KIND_NAMES[report.kind(d)]
        kinds[name] = kinds.get(name, 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in kinds.items())
    nodes = "node remains" if len(gated) == 1 else "nodes remain"
    return f"{escape(str(o.input))}: {len(gated)} foldable {nodes} ({what})"


def render_one(o: Outcome, mode: Mode, ui: Ui) -> None:
    """The report of one model (a batch shows a table of them instead)."""
    if o.result is None:
        return
    result = o.result
    report = result.report
    name = str(o.input)
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
    ui.say(escape(f"{name}: {summary(result)}"))
    note = growth(result)
    if note:
        ui.say(f"note: {escape(note)}")
    v = result.verification
    if v is not None:
        if v.status == "failed":
            ui.show(lambda: comparison_table(v, "worst outputs"))
        ui.say(verification_line(v))
    elif report.changed and result.written:
        ui.say("verification skipped (--no-verify)")
    for path in result.written:
        ui.say(f"wrote {escape(str(path))}")
    if o.status == "unchanged" and not result.written:
        ui.say(f"{escape(name)} left as it was (nothing to fold)")
