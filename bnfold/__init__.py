"""bnfold: fold BatchNormalization into the layer before it, and prove the model is unchanged.

Public API: ``fold_model``, ``fold_file``, ``verify``, ``benchmark``, the option types they take
(``VerifyOptions``, ``FoldRule``/``DEFAULT_RULES``) and the result types.
Names are imported on first use, so that ``import bnfold`` (and the verification child process,
which needs neither the fold engine nor onnx) stays cheap; onnxruntime is only ever imported in
a child process. The verification package is ``bnfold.verification`` so that ``bnfold.verify``
is always the function. docs/architecture.md shows the subpackages and their layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnfold._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "BNDecision": "bnfold.fold.report",
    "BenchReport": "bnfold.bench.report",
    "BnfoldError": "bnfold.errors",
    "DEFAULT_RULES": "bnfold.fold.rules",
    "FileStatus": "bnfold.api",
    "FileFoldResult": "bnfold.api",
    "FoldReport": "bnfold.fold.report",
    "FoldResult": "bnfold.fold.report",
    "FoldRule": "bnfold.fold.rules",
    "InputError": "bnfold.errors",
    "OutputComparison": "bnfold.verification.report",
    "OutputError": "bnfold.errors",
    "Reason": "bnfold.fold.rules",
    "UsageError": "bnfold.errors",
    "VerificationFailed": "bnfold.errors",
    "VerifyOptions": "bnfold.api",
    "VerifyReport": "bnfold.verification.report",
    "benchmark": "bnfold.bench.run",
    "default_output": "bnfold.api",
    "fold_file": "bnfold.api",
    "fold_model": "bnfold.api",
    "verify": "bnfold.verification.run",
}

__all__ = [
    "DEFAULT_RULES",
    "BNDecision",
    "BenchReport",
    "BnfoldError",
    "FileFoldResult",
    "FileStatus",
    "FoldReport",
    "FoldResult",
    "FoldRule",
    "InputError",
    "OutputComparison",
    "OutputError",
    "Reason",
    "UsageError",
    "VerificationFailed",
    "VerifyOptions",
    "VerifyReport",
    "__version__",
    "benchmark",
    "default_output",
    "fold_file",
    "fold_model",
    "verify",
]

if TYPE_CHECKING:
    from bnfold.api import (
        FileFoldResult,
        FileStatus,
        VerifyOptions,
        default_output,
        fold_file,
        fold_model,
    )
    from bnfold.bench.report import BenchReport
    from bnfold.bench.run import benchmark
    from bnfold.errors import (
        BnfoldError,
        InputError,
        OutputError,
        UsageError,
        VerificationFailed,
    )
    from bnfold.fold.report import BNDecision, FoldReport, FoldResult
    from bnfold.fold.rules import DEFAULT_RULES, FoldRule, Reason
    from bnfold.verification.report import OutputComparison, VerifyReport
    from bnfold.verification.run import verify


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
