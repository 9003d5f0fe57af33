"""The Python API: fold a ModelProto, or fold a file and write the result."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from bnfold.engine import FoldEngine
from bnfold.errors import UsageError
from bnfold.modelio import load_model, save_model_atomic
from bnfold.report import FoldReport, FoldResult
from bnfold.rules import DEFAULT_RULES, FoldRule


def fold_model(
    model: onnx.ModelProto,
    *,
    inplace: bool = False,
    rules: Sequence[FoldRule] = DEFAULT_RULES,
) -> FoldResult:
    """Fold every foldable BatchNormalization of ``model`` into the layer before it.

    The model must hold its weights in memory (load external data first, or use ``fold_file``).
    Unless ``inplace``, the given model is left untouched and a folded copy is returned.
    """
    if not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    report = FoldEngine(model, rules).run()
    return FoldResult(model=model, report=report)


def default_output(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.folded.onnx`` beside it."""
    p = Path(path)
    return (
        p.with_name(p.stem + ".folded.onnx") if p.suffix else p.with_name(p.name + ".folded.onnx")
    )


@dataclass(frozen=True)
class FileFoldResult:
    """What ``fold_file`` did: the report and the files it wrote (none for a dry run)."""

    input: Path
    output: Path | None
    report: FoldReport
    written: tuple[Path, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output) if self.output else None,
            "written": [str(p) for p in self.written],
            "report": self.report.to_dict(),
        }


def fold_file(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    in_place: bool = False,
    write: bool = True,
    rules: Sequence[FoldRule] = DEFAULT_RULES,
) -> FileFoldResult:
    """Fold the model file at ``path`` and write it to ``output`` (default ``<stem>.folded.onnx``).

    External data is loaded and written back external beside the output. The input file is never
    modified unless ``in_place``; the output appears atomically or not at all.
    """
    src = Path(path)
    dst = src if in_place else Path(output) if output is not None else default_output(src)
    if not in_place and _same_file(src, dst):
        raise UsageError(
            f"{dst}: output would overwrite the input",
            hint="choose another -o/--output, or pass --in-place",
        )
    model = load_model(src)
    result = fold_model(model, inplace=True, rules=rules)
    written: tuple[Path, ...] = ()
    if write:
        written = tuple(save_model_atomic(result.model, dst))
    return FileFoldResult(
        input=src, output=dst if write else None, report=result.report, written=written
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
