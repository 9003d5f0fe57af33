"""bnfold: fold BatchNormalization into the layer before it, and prove the model is unchanged.

Public API: ``fold_model``, ``fold_file``, ``verify`` and the result types. onnxruntime is only
imported when something is actually run (verification runs it in a child process). The
verification code lives in ``bnfold.verification`` so that ``bnfold.verify`` is always the function.
"""

from __future__ import annotations

from bnfold.api import FileFoldResult, default_output, fold_file, fold_model
from bnfold.errors import BnfoldError, InputError, OutputError, UsageError, VerificationFailed
from bnfold.report import BNDecision, FoldReport, FoldResult
from bnfold.rules import Reason
from bnfold.verification import OutputComparison, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "BNDecision",
    "BnfoldError",
    "FileFoldResult",
    "FoldReport",
    "FoldResult",
    "InputError",
    "OutputComparison",
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
