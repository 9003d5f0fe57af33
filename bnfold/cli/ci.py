"""What a CI reads besides the exit code: GitHub workflow commands (one ``::error`` per failing
model) and a Markdown table for the job summary, and JUnit XML (GitLab, Jenkins, Azure, ...).

A model "fails" when its exit code is not 0: a foldable node left (``check``), verification
failed or not possible (``fold``), or a file that cannot be used. Names come from the command
line and from model files, untrusted: each format escapes them by its own rules (GitHub's
``%``/CR/LF in data, also ``,`` and ``:`` in properties; Markdown's ``|`` and HTML; XML's
markup and the characters XML 1.0 cannot hold).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold.cli.record import record_line
from bnfold.cli.render import remaining
from bnfold.cli.ui import printable
from bnfold.errors import OutputError, UsageError

if TYPE_CHECKING:
    from bnfold.batch import Mode, Outcome
    from bnfold.cli.ui import Ui

#: ``--format``: auto is github inside GitHub Actions (GITHUB_ACTIONS=true), else text.
FORMATS = ("auto", "text", "github")


def github_enabled(fmt: str, env: Mapping[str, str] = os.environ) -> bool:
    """Whether to print workflow commands and write the job summary."""
    if fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    return fmt == "github" or (fmt == "auto" and env.get("GITHUB_ACTIONS") == "true")


# -- one line per model ---------------------------------------------------------------------------


def foldable_left(o: Outcome) -> int:
    """Nodes ``check`` fails on that are still in the model (0 when it could not be read)."""
    return len(o.result.report.gated()) if o.result is not None else 0


def failure_line(o: Outcome, mode: Mode) -> str | None:
    """Why ``o`` fails the gate, in one line without its file name; None when it passes."""
    if o.exit_code == 0:
        return None
    if o.status == "foldable" and o.result is not None:
        return remaining(o.result.report)
    v = o.result.verification if o.result is not None else None
    if o.status == "unverified" and v is not None:
        return f"written unverified: {v.reason}"
    return o.error or o.status


def passing_line(o: Outcome) -> str:
    """What is worth knowing about a model that passes: its record, or what was not folded."""
    if o.result is None:
        return ""
    if o.result.record is not None:
        return record_line(o.result.record)
    kept = o.result.report.reasons()
    return "not folded: " + ", ".join(f"{k} x{v}" for k, v in kept.items()) if kept else ""


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


# -- GitHub: workflow commands and the job summary ------------------------------------------------


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF as GitHub's runner decodes them; other
    control characters shown as escapes."""
    escaped = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return printable(escaped)


def escape_property(text: str) -> str:
    """A workflow command's property value: as data, and ``:`` and ``,`` too."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(path: Path, env: Mapping[str, str] = os.environ) -> str:
    """The model's path as GitHub matches it to a file: relative to the workspace if inside."""
    workspace = env.get("GITHUB_WORKSPACE")
    if workspace and path.is_absolute():
        try:
            return path.relative_to(workspace).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def workflow_commands(outcomes: Sequence[Outcome], mode: Mode, env: Mapping[str, str]) -> list[str]:
    """One ``::error file=...,title=bnfold::...`` line per failing model."""
    lines = []
    for o in outcomes:
        why = failure_line(o, mode)
        if why is not None:
            where = escape_property(annotation_path(o.input, env))
            lines.append(f"::error file={where},title=bnfold::{escape_data(why)}")
    return lines


def _cell(text: str) -> str:
    """A Markdown table cell: one line, no HTML, no column breaks."""
    text = printable(_one_line(text).replace("\r", " "))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|") or " "


def step_summary(outcomes: Sequence[Outcome], mode: Mode) -> str:
    """The job summary: a heading with the count of failing models and one row per model."""
    failing = sum(o.exit_code != 0 for o in outcomes)
    third = "foldable left" if mode == "check" else "folded"
    rows = [
        f"### bnfold {mode}: {failing} of {len(outcomes)} model(s) failing",
        "",
        f"| model | status | {third} | reason |",
        "|---|---|---:|---|",
    ]
    for o in outcomes:
        r = o.result.report if o.result is not None else None
        if mode == "check":
            count = str(foldable_left(o)) if r is not None else "-"
        else:
            count = f"{r.folded}/{r.total}" if r is not None else "-"
        why = failure_line(o, mode)
        reason = why if why is not None else passing_line(o)
        cells = [_cell(str(o.input)), _cell(o.status), count, _cell(reason)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n"


def report_github(outcomes: Sequence[Outcome], mode: Mode, ui: Ui) -> None:
    """Print the workflow commands on stderr (stdout stays the JSON document's) and append the
    table to ``$GITHUB_STEP_SUMMARY`` when the runner gives one."""
    env = os.environ
    for line in workflow_commands(outcomes, mode, env):
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            # an undecodable file name (a lone surrogate) is written as an escape, not a crash
            with open(summary, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(step_summary(outcomes, mode))
        except OSError as exc:
            ui.warn(f"{summary}: cannot write the job summary ({exc.strerror or exc})")


# -- JUnit XML ------------------------------------------------------------------------------------

#: What XML 1.0 cannot hold (controls, lone surrogates from undecodable file names, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` as XML 1.0 can carry it: control characters and lone surrogates as escapes."""
    return _NOT_XML.sub(_escape_char, printable(text))


def _escape_char(match: re.Match[str]) -> str:
    n = ord(match.group())
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def junit_xml(outcomes: Sequence[Outcome], mode: Mode) -> bytes:
    """One testsuite, one testcase per model, a ``<failure>`` with the one-line reason for each
    model that fails the gate."""
    import xml.etree.ElementTree as ET

    failing = [failure_line(o, mode) for o in outcomes]
    counts = {"tests": str(len(outcomes)), "failures": str(sum(f is not None for f in failing))}
    root = ET.Element("testsuites", {"name": "bnfold", **counts})
    suite = ET.SubElement(
        root, "testsuite", {"name": f"bnfold {mode}", **counts, "errors": "0", "skipped": "0"}
    )
    for o, why in zip(outcomes, failing, strict=True):
        name = xml_text(str(o.input))
        case = ET.SubElement(
            suite, "testcase", {"classname": f"bnfold.{mode}", "name": name, "file": name}
        )
        if why is not None:
            failure = ET.SubElement(
                case, "failure", {"message": xml_text(_one_line(why)), "type": o.status}
            )
            failure.text = xml_text(why)
        elif passing_line(o):
            ET.SubElement(case, "system-out").text = xml_text(passing_line(o))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def check_writable(path: Path) -> None:
    """Refuse (before any model runs) a report path whose folder does not exist."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--junit {path}: folder {folder} does not exist", hint="create it first")
    if path.is_dir():
        raise UsageError(f"--junit {path}: is a folder", hint="give a file name")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a
    reader never sees half a report."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bnfold-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def report_command_error(
    mode: Mode, message: str, ui: Ui, *, github: bool, junit: Path | None
) -> None:
    """An error before any model ran (an empty folder, contradicting outputs): one annotation
    without a file, and a JUnit report with one failing testcase, so the CI shows why."""
    from bnfold.batch import Outcome

    if github:
        sys.stderr.write(f"::error title=bnfold::{escape_data(message)}\n")
        sys.stderr.flush()
    if junit is not None:
        failed = Outcome(Path(f"bnfold {mode}"), "error", 1, error=message)
        try:
            write_atomic(junit, junit_xml([failed], mode))
        except OutputError as exc:  # the first error is the one to report; this one is told
            ui.error(exc.cli_message)
