"""``bnfold inspect`` and ``bnfold check``: fold in memory, report, write nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from bnfold.cli.batch import run_batch
from bnfold.cli.fold import FORMAT_OPT, JUNIT_OPT, MODELS_ARG
from bnfold.cli.options import command
from bnfold.cli.ui import Ui


def register(app: typer.Typer) -> None:
    """Add ``inspect`` and ``check`` to ``app``."""

    @command(app, "inspect")
    def inspect_cmd(models: list[Path] = MODELS_ARG, *, ui: Ui) -> int:
        """Show every BatchNormalization and scale Mul/Add, whether it would fold and why not.

        Writes nothing.
        """
        return run_batch("inspect", models, ui)

    @command(app, "check")
    def check_cmd(
        models: list[Path] = MODELS_ARG,
        fmt: str = FORMAT_OPT,
        junit: Path | None = JUNIT_OPT,
        *,
        ui: Ui,
    ) -> int:
        """Exit 1 if a MODEL still has a foldable BatchNormalization or scale Mul (a CI gate).

        Every .onnx given or found in a folder is checked, bnfold's own *.folded.onnx
        included. A bias Add after MatMul/Gemm (a Linear layer) does not count. With -q, one
        line per failing model. Writes nothing but the --junit report and the GitHub summary.
        """
        return run_batch("check", models, ui, fmt=fmt, junit=junit)
