"""The JSON documents ``--json`` prints, built from the API's result objects.

Every document starts with the same header (``bnfold``, ``schema_version``, ``command``,
``exit_code``) and validates against ``bnfold.cli.schema.SCHEMA``. Importing this module is cheap:
the result types are only needed by the caller that has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bnfold._version import __version__
from bnfold.fold.report import KINDS

if TYPE_CHECKING:
    from bnfold.api import RecordCheck
    from bnfold.batch import Outcome
    from bnfold.fold.report import FoldReport
    from bnfold.verification.report import VerifyReport

#: Bumped when a field is renamed or removed (never within a major version); adding is free.
SCHEMA_VERSION = 1


def header(command: str, exit_code: int) -> dict[str, Any]:
    """The fields every document has, in this order."""
    return {
        "bnfold": __version__,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "exit_code": exit_code,
    }


def batch_document(command: str, outcomes: Sequence[Outcome], exit_code: int) -> dict[str, Any]:
    """``fold``, ``inspect`` and ``check``: a summary and one entry per model."""
    reports = [o.result.report for o in outcomes if o.result is not None]
    return {
        **header(command, exit_code),
        "summary": {
            "models": len(outcomes),
            "errors": sum(o.status == "error" for o in outcomes),
            "bn_total": sum(r.bn_total for r in reports),
            "bn_folded": sum(r.bn_folded for r in reports),
            "folded": sum(r.folded for r in reports),
            "skipped": sum(r.skipped for r in reports),
            "counts": _tally(reports),
            "statuses": _count(o.status for o in outcomes),
        },
        "models": [o.to_dict() for o in outcomes],
    }


def verify_document(
    original: str,
    candidate: str,
    report: VerifyReport,
    exit_code: int,
    record: RecordCheck | None = None,
) -> dict[str, Any]:
    """``verify``: the two models, the comparison, and the candidate's fold record checked
    against the original file."""
    return {
        **header("verify", exit_code),
        "original": original,
        "candidate": candidate,
        "verification": report.to_dict(),
        "record": record.to_dict() if record is not None else None,
    }


def error_document(command: str, exit_code: int, error_type: str, message: str) -> dict[str, Any]:
    """Any command that fails before a model ran: a usage error, an empty folder."""
    return {
        **header(command, exit_code),
        "error": {"type": error_type, "message": message},
        "summary": None,
        "models": [],
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def _tally(reports: Sequence[FoldReport]) -> dict[str, dict[str, int]]:
    """Folded and total per kind over every model (the kinds of ``FoldReport.tally``)."""
    total: dict[str, dict[str, int]] = {k: {"folded": 0, "total": 0} for k in KINDS}
    for report in reports:
        for kind, t in report.tally().items():
            total[kind]["folded"] += t.folded
            total[kind]["total"] += t.total
    return total
