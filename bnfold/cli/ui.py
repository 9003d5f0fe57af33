"""The one output sink of the command line. The report (tables, summaries, "wrote ...") is the
program's output and goes to stdout; progress, warnings and errors go to stderr. With ``--json``
stdout holds one JSON document and nothing else; ``-q`` drops the report but a failing verdict.

Both streams are as wide as the terminal, or as COLUMNS says when piped (80 without it).
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
#: with ESC), DEL, C1 controls, and the bidirectional overrides that reorder what is shown; and
#: lone surrogates (a file name that is not UTF-8), which no stream can encode.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


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


def shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters (``abc…xyz``): both ends of a
    node or file name say more than either alone."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "\u2026" + (text[-tail:] if tail else "")


def emit_json(doc: dict[str, Any]) -> None:
    """Write one JSON document to stdout (non-finite numbers are a bug: they must be null)."""
    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


class Ui:
    """Where a command's output goes and how much of it: ``--json``, ``-q``, ``-v``, ``--debug``."""

    def __init__(
        self,
        *,
        as_json: bool = False,
        quiet: bool = False,
        debug: bool = False,
        verbose: bool = False,
    ) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.debug = debug
        self.verbose = verbose
        self._out: Console | None = None
        self._err: Console | None = None

    @staticmethod
    def _console(stderr: bool) -> Console:
        from rich.console import Console

        no_color = bool(os.environ.get("NO_COLOR"))
        # an error or warning is one line however long (a log greps it whole); the report
        # is folded to the width by ``say`` and by rich's tables
        return Console(stderr=stderr, no_color=no_color, highlight=False, soft_wrap=stderr)

    @property
    def out(self) -> Console:
        """The stdout console (the report), made on first use."""
        if self._out is None:
            self._out = self._console(stderr=False)
        return self._out

    @property
    def err(self) -> Console:
        """The stderr console (progress, warnings, errors), made on first use."""
        if self._err is None:
            self._err = self._console(stderr=True)
        return self._err

    @property
    def width(self) -> int:
        """Columns the report may use."""
        return int(self.out.width)

    @property
    def reports(self) -> bool:
        """Whether the report for people is printed at all (not with --json or -q)."""
        return not (self.as_json or self.quiet)

    def status(self, text: str) -> Any:
        """A spinner on a terminal while something long runs (nothing when quiet or piped)."""
        if self.quiet or not self.err.is_terminal:
            return contextlib.nullcontext()
        return self.err.status(text)

    @contextlib.contextmanager
    def progress(self, names: list[str], verb: str) -> Iterator[Callable[[int, str], None]]:
        """Progress of a batch of ``names`` on stderr; yields ``done(index, status)`` to call
        per model.

        On a terminal a bar shows ``n/m`` and the model being processed (the first unfinished
        one: models start in order); elsewhere each finished model is one plain line
        ``[n/m] MODEL: STATUS``, as it finishes. Nothing when quiet or for one model.
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
            return escape(shorten(f"{verb} {len(finished)}/{total} {name}", self.err.width - 50))

        with Progress(console=self.err, transient=True) as bar:
            task = bar.add_task(label(), total=total)

            def advance(index: int, status: str) -> None:
                finished.add(index)
                bar.update(task, advance=1, description=label())

            yield advance

    def say(self, text: str, *, indent: int = 0) -> None:
        """A line of the report (rich markup, already escaped), wrapped at word boundaries to
        the width with ``indent`` spaces before each line; dropped by ``-q`` and ``--json``."""
        if self.reports:
            self._wrapped(text, indent)

    def tell(self, text: str) -> None:
        """A verdict shown even with ``-q`` (a failing check): in the report, or on stderr with
        ``--json`` (where stdout is the document's), so that a log still says why it failed."""
        if self.as_json:
            self.err.print(text)
        else:
            self._wrapped(text, 0)

    def _wrapped(self, text: str, indent: int) -> None:
        """Print ``text`` folded to the console's width, without trailing spaces (which rich's
        own wrapping leaves): a log or a pipe gets lines no wider than COLUMNS."""
        from rich.text import Text

        console = self.out
        lines = Text.from_markup(text).wrap(console, max(10, console.width - indent))
        pad = " " * indent
        for line in lines:
            line.rstrip()
            console.print(Text(pad) + line if pad else line, soft_wrap=True)

    def show(self, make: Callable[[], Any]) -> None:
        """Print what ``make`` builds (a table) in the report, building it only when shown."""
        if self.reports:
            self.out.print(make())

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
