"""``bnfold verify A B``: run two models on the same inputs and compare every output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bnfold.cli.options import VerifyGroup, command
from bnfold.cli.record import record_check_line
from bnfold.cli.render import comparisons, verification_line
from bnfold.cli.ui import Ui, escape
from bnfold.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK

if TYPE_CHECKING:
    from bnfold.api import VerifyOptions


def register(app: typer.Typer) -> None:
    """Add ``verify`` to ``app``."""

    @command(app, "verify", verify=VerifyGroup())
    def verify_cmd(
        original: Path = typer.Argument(
            ..., help="The reference model.", show_default=False, readable=False
        ),
        candidate: Path = typer.Argument(
            ..., help="The model to compare with it.", show_default=False, readable=False
        ),
        *,
        ui: Ui,
        verify: VerifyOptions,
    ) -> int:
        """Run two models with the same inputs and outputs and compare every output.

        When CANDIDATE carries a fold record, its source sha256 is checked against ORIGINAL
        too. Exit 0 when all outputs match (and the record, if any, names ORIGINAL), 1 when
        one differs or the record names another source file, 3 when neither onnxruntime nor
        onnx.reference can run the models.
        """
        from bnfold.api import check_record, verify_with
        from bnfold.cli.documents import verify_document

        report = verify_with(original, candidate, verify)
        code = {"passed": EXIT_OK, "failed": EXIT_FAILED}.get(report.status, EXIT_INPUT)
        record = check_record(original, candidate)
        if record.status == "mismatch" and code == EXIT_OK:
            code = EXIT_FAILED  # same outputs, but not the file it claims to be folded from
        ui.emit(verify_document(str(original), str(candidate), report, code, record))
        if report.status == "unverified":
            ui.error(f"{original} vs {candidate}: could not run the models ({report.reason})")
        else:
            comparisons(ui, report, f"{original} vs {candidate}")
            if report.status == "failed":
                ui.tell(verification_line(report))  # the verdict, even with -q
            else:
                ui.say(verification_line(report))
        line = record_check_line(record, str(original), str(candidate))
        if record.status == "mismatch":
            ui.error(line)
        else:
            ui.say(escape(line))
        for note in report.notes:
            ui.say(f"note: {escape(note)}")
        return code
