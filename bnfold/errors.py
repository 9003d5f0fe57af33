"""Errors a user can cause, each with the exit code the CLI returns for it.

Anything that is not a ``BnfoldError`` is a bug in bnfold and is shown with a traceback.
"""

from __future__ import annotations

import re
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # verification failed, or `check` found a foldable BatchNormalization
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_INPUT = 3  # the input cannot be used: unreadable, not ONNX, invalid, missing external data
EXIT_UNVERIFIED = 4  # written, but unverified: verification timed out, crashed or could not run


#: Command-line spellings that messages may use, and the API parameter each one sets.
_PARAMETERS = {
    "-o/--output": "output",
    "--output": "output",
    "--in-place": "in_place",
    "--require-verified": "require_verified",
    "--no-verify": "verify=None",
    "--force": "force",
    "--no-record": "record=False",
    "--input-shape": "input_shapes",
    "--inputs": "inputs",
    "--samples": "samples",
    "--seed": "seed",
    "--rtol": "rtol",
    "--atol": "atol",
    "--output-tolerance": "output_tolerances",
    "--timeout": "timeout",
    "--jobs": "jobs",
    "--iterations": "iterations",
    "--warmup": "warmup",
    "--threads": "threads",
    "--plot": "plot",
}
_FLAG = re.compile(r"(?<![\w-])(?:-o/--output|--[a-z][a-z-]*)")


def api_terms(text: str) -> str:
    """``text`` with every command-line flag replaced by the API parameter it stands for."""
    return _FLAG.sub(lambda m: _PARAMETERS.get(m.group(), m.group()), text)


def _one_line(text: str) -> str:
    """``text`` with its line breaks written as ``\\x0a``/``\\x0d``: a name read from a model can
    hold one, and an error is one line."""
    return text.replace("\r", "\\x0d").replace("\n", "\\x0a")


class BnfoldError(Exception):
    """A problem the user can fix; rendered as one line, never a traceback.

    ``str(exc)`` speaks the API's terms (parameter names); ``cli_message`` is the same line in
    the command line's terms (flags), for the CLI to show.
    """

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = _one_line(message)
        super().__init__(message)
        self.message = message
        self.hint = _one_line(hint) if hint is not None else None

    @property
    def cli_message(self) -> str:
        """The message and hint as the command line shows them."""
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __str__(self) -> str:
        return api_terms(self.cli_message)


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
