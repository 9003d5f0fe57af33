"""``bnfold fold MODEL...`` (also plain ``bnfold MODEL...``): fold, verify, write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bnfold.cli.batch import run_batch
from bnfold.cli.options import VerifyGroup, command
from bnfold.cli.ui import Ui
from bnfold.errors import UsageError

if TYPE_CHECKING:
    from bnfold.api import VerifyOptions

# readable=False: bnfold itself says why a model cannot be read (exit 3), not click (exit 2)
MODELS_ARG = typer.Argument(
    ...,
    help="ONNX model files or folders of them.",
    show_default=False,
    metavar="MODEL...",
    readable=False,
)

FORMAT_OPT = typer.Option(
    "auto",
    "--format",
    metavar="auto|text|github",
    help="github: one ::error annotation per failing model, and a table appended to "
    "$GITHUB_STEP_SUMMARY; auto: github when GITHUB_ACTIONS=true.",
)
JUNIT_OPT = typer.Option(
    None,
    "--junit",
    metavar="FILE",
    help="Also write JUnit XML: one testcase per model, a failure for each that fails.",
)


def register(app: typer.Typer) -> None:
    """Add ``fold`` to ``app``."""

    @command(app, "fold", verify=VerifyGroup(policy=True))
    def fold_cmd(
        models: list[Path] = MODELS_ARG,
        output: str | None = typer.Option(
            None,
            "-o",
            "--output",
            help="Output file, or a folder (an existing one, or ending in /) [default: MODEL's "
            "stem + '.folded.onnx' beside it].",
            show_default=False,
        ),
        in_place: bool = typer.Option(
            False, "--in-place", help="Overwrite each MODEL itself (untouched if nothing folds)."
        ),
        force: bool = typer.Option(False, "--force", help="Write even when verification fails."),
        jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="Models processed in parallel."),
        no_record: bool = typer.Option(
            False,
            "--no-record",
            help="Write no fold record (metadata key 'bnfold': source sha256, options, "
            "verification) into the output.",
        ),
        fmt: str = FORMAT_OPT,
        junit: Path | None = JUNIT_OPT,
        *,
        ui: Ui,
        verify: VerifyOptions | None,
    ) -> int:
        """Fold, verify with onnxruntime, and write each MODEL (the default command).

        Exit 0 written (verified, or nothing to fold), 1 verification failed, 2 usage error,
        3 unusable input, 4 written but unverified (timeout, crash, nothing could run it).
        """
        if verify is None and force:
            raise UsageError("--no-verify contradicts --require-verified and --force")
        return run_batch(
            "fold",
            models,
            ui,
            output=output,
            in_place=in_place,
            verify=verify,
            force=force,
            jobs=jobs,
            record=not no_record,
            fmt=fmt,
            junit=junit,
        )
