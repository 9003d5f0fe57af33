"""Errors a user can cause, each with the exit code the CLI returns for it.

Anything that is not a ``BnfoldError`` is a bug in bnfold and is shown with a traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # verification failed, or `check` found a foldable BatchNormalization
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_INPUT = 3  # the input cannot be used: unreadable, not ONNX, invalid, missing external data


class BnfoldError(Exception):
    """A problem the user can fix; rendered as one line, never a traceback."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(BnfoldError):
    """Options that contradict each other or do not fit the model (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(BnfoldError):
    """A model file that cannot be read, parsed or used (exit 3)."""

    exit_code = EXIT_INPUT


class OutputError(BnfoldError):
    """The output cannot be written where the user asked (exit 3)."""

    exit_code = EXIT_INPUT


class VerificationFailed(BnfoldError):
    """The folded model's outputs differ from the original's beyond tolerance (exit 1).

    ``result`` is the ``FileFoldResult`` with the verification report, for rendering.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None, result: Any = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result
