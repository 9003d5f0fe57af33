"""The rows of a report, one per BatchNormalization or scale Mul/Add: a table on a wide terminal,
a line and its message below 100 columns, or, for many rows, one entry per reason with an example
and the fix. Names are shortened in the middle; reason codes are never cut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnfold.cli.ui import escape, shorten

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.cli.ui import Ui
    from bnfold.fold.report import BNDecision


#: More rows than this are summarised by reason on a plain fold or check (-v lists them all).
GROUP_FROM = 10


#: From this many columns decisions are a table; narrower, each message gets lines of its own.
WIDE = 100


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
    from bnfold.fold.rules.reasons import HINTS

    hints = {reason.value: hint for reason, hint in HINTS.items()}
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
        hint = hints.get(code)
        if hint:
            ui.say(escape(f"fix: {hint}"), indent=6)
