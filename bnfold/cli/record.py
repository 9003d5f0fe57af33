"""The fold record for people: one line saying where a folded model came from.

"folded by bnfold 0.1.0 from 8d93ea4e41e6, verified: worst error 2.4e-07". A record comes from
a model file, untrusted: every field is checked for its type before it is shown, and the line is
escaped by the caller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bnfold.cli.ui import escape

if TYPE_CHECKING:
    from bnfold.api import RecordCheck
    from bnfold.batch import Mode, Outcome
    from bnfold.cli.ui import Ui

#: How much of a sha256 a line shows (as git shows a commit).
PREFIX = 12
_HEX = re.compile(r"^[0-9a-f]{64}$")


def short_sha(value: Any) -> str:
    """The first 12 hex digits of a sha256, or "?" for anything that is not one."""
    return value[:PREFIX] if isinstance(value, str) and _HEX.match(value) else "?"


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def verdict(record: Mapping[str, Any]) -> str:
    """What the record says verification proved, in a few words."""
    v = _dict(record.get("verification"))
    status = v.get("status")
    worst = _number(_dict(v.get("worst")).get("max_abs"))
    error = f": worst error {worst:.3g}" if worst is not None else ""
    if status == "passed":
        return f"verified{error}"
    if status == "failed":
        return f"verification FAILED{error} (written with --force)"
    if status == "unverified":
        return "unverified (verification could not run)"
    if status == "not_run":
        return "nothing to fold" if v.get("why") == "nothing_folded" else "not verified"
    return "verification unknown"


def record_line(record: Mapping[str, Any]) -> str:
    """``folded by bnfold X from <sha256 prefix>, <verdict>`` (plain text, not escaped)."""
    version = record.get("version")
    version = version if isinstance(version, str) and len(version) <= 40 else "?"
    sha = short_sha(_dict(record.get("source")).get("sha256"))
    return f"folded by bnfold {version} from {sha}, {verdict(record)}"


def show_record(o: Outcome, mode: Mode, ui: Ui) -> None:
    """For ``inspect`` and ``check``: the record of the model, when it carries one."""
    record = o.result.record if o.result is not None else None
    if mode != "fold" and record is not None:
        ui.say(escape(f"{o.input}: {record_line(record)}"))


def record_check_line(check: RecordCheck, original: str, candidate: str) -> str:
    """``verify``'s line about the candidate's record against the original file (plain text)."""
    if check.status == "match":
        return f"record: {candidate} was folded from {original} (sha256 {short_sha(check.actual)})"
    if check.status == "mismatch":
        return (
            f"record: {candidate} says it was folded from {short_sha(check.recorded)}, but "
            f"{original} is {short_sha(check.actual)}{check.detail}: not folded from this file"
        )
    return f"record: {candidate} carries no bnfold record; its source is not checked"
