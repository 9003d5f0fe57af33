"""The one output sink of the command line: JSON to stdout, everything for people to stderr.

Importing this module costs nothing beyond the standard library: rich is imported when
something is printed, never for ``--help``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Characters that a terminal acts on instead of showing: C0 controls (escape sequences start
#: with ESC), DEL, C1 controls, and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _code_point(match: re.Match[str]) -> str:
    n = ord(match.group())
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``): file and node
    names come from untrusted models and command lines and must not drive the terminal."""
    return _CONTROL.sub(_code_point, text)


def escape(text: str) -> str:
    """Text shown literally by rich: no markup, no control characters (rich itself is imported
    only when something is printed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(text))


def table(title: str) -> Table:
    """A rich table with an escaped, left-aligned title."""
    from rich.table import Table

    return Table(title=escape(title), title_justify="left")


def emit_json(doc: dict[str, Any]) -> None:
    """Write one JSON document to stdout (non-finite numbers are a bug: they must be null)."""
    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


class Ui:
    """Where a command's output goes, and how much of it: ``--json``, ``-q``, ``--debug``."""

    def __init__(self, *, as_json: bool = False, quiet: bool = False, debug: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.debug = debug
        self._err: Console | None = None

    @property
    def err(self) -> Console:
        """The stderr console, made on first use (a quiet run that succeeds never needs rich)."""
        if self._err is None:
            from rich.console import Console

            no_color = bool(os.environ.get("NO_COLOR"))
            self._err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)
            if not self._err.is_terminal:
                self._err.width = 160  # logs and pipes: do not squeeze tables to 80 columns
        return self._err

    def status(self, text: str) -> Any:
        """A spinner on a terminal while something long runs (nothing when quiet or piped)."""
        if self.quiet or not self.err.is_terminal:
            return contextlib.nullcontext()
        return self.err.status(text)

    @contextlib.contextmanager
    def progress(self, names: list[str], verb: str) -> Iterator[Callable[[int, str], None]]:
        """Progress of a batch of ``names``; yields ``done(index, status)`` to call per model.

        On a terminal a bar shows ``n/m`` and the model being processed (the first unfinished
        one: models start in order); elsewhere each finished model is one plain line
        ``[n/m] MODEL: STATUS`` on stderr, as it finishes. Nothing when quiet or for one model.
        """
        total = len(names)
        finished: set[int] = set()
        if self.quiet or total <= 1:
            yield lambda index, status: None
            return
        if not self.err.is_terminal:

            def line(index: int, status: str) -> None:
                finished.add(index)
                text = f"[{len(finished)}/{total}] {printable(names[index])}: {printable(status)}"
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

            yield line
            return
        from rich.progress import Progress

        def label() -> str:
            current = next((i for i in range(total) if i not in finished), None)
            name = names[current] if current is not None else ""
            return escape(f"{verb} {len(finished)}/{total} {name}")

        with Progress(console=self.err, transient=True) as bar:
            task = bar.add_task(label(), total=total)

            def advance(index: int, status: str) -> None:
                finished.add(index)
                bar.update(task, advance=1, description=label())

            yield advance

    def say(self, text: str) -> None:
        """Rich markup for people; dropped by ``-q``."""
        if not self.quiet:
            self.err.print(text)

    def tell(self, text: str) -> None:
        """A line shown even with ``-q`` (a failing check): rich markup, already escaped."""
        self.err.print(text)

    def show(self, make: Callable[[], Any]) -> None:
        """Print what ``make`` builds (a table), building it only when it will be shown."""
        if not self.quiet:
            self.err.print(make())

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(text)}")

    def error(self, text: str, trace: str | None = None) -> None:
        if self.debug:
            if trace is None and sys.exc_info()[1] is not None:
                trace = traceback.format_exc()
            if trace:
                lines = trace.rstrip("\n").split("\n")
                self.err.print("\n".join(printable(line) for line in lines), markup=False)
        self.err.print(f"[red]error:[/red] {escape(text)}")

    def emit(self, doc: dict[str, Any]) -> None:
        """The command's JSON document, when ``--json`` asked for it."""
        if self.as_json:
            emit_json(doc)
