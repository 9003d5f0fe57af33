"""bnfold: fold BatchNormalization into the layer before it, and prove the model is unchanged.

Public API: ``fold_model``, ``fold_file``, ``verify`` and the result types. onnxruntime is only
imported when something is actually run (verification, benchmarks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bnfold.api import FileFoldResult, default_output, fold_file, fold_model
from bnfold.errors import BnfoldError, InputError, OutputError, UsageError, VerificationFailed
from bnfold.report import BNDecision, FoldReport, FoldResult
from bnfold.rules import Reason

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bnfold.verify import VerifyReport, verify

__all__ = [
    "BNDecision",
    "BnfoldError",
    "FileFoldResult",
    "FoldReport",
    "FoldResult",
    "InputError",
    "OutputError",
    "Reason",
    "UsageError",
    "VerificationFailed",
    "VerifyReport",
    "__version__",
    "default_output",
    "fold_file",
    "fold_model",
    "verify",
]


def __getattr__(name: str) -> Any:
    # verify pulls in the input generators; keep `import bnfold` light.
    if name in ("verify", "VerifyReport"):
        from bnfold import verify as _verify_module

        return getattr(_verify_module, name)
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
