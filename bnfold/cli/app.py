"""The ``bnfold`` command: parses, calls the API, renders. No folding logic lives here.

stdout carries only results meant for programs (one JSON document with ``--json``, also for a
usage error); tables, progress, warnings and errors go to stderr. Exit codes: 0 ok (also
"nothing to fold"), 1 verification failed or ``check`` found a foldable BatchNormalization,
2 usage error, 3 unusable input, 4 written but unverified.

One module per command (``fold``, ``check``, ``verify``, ``bench``), option groups that build the
API's option objects in ``options``, the output sink in ``ui``.
Nothing here imports onnx, numpy or onnxruntime: ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from typer._click.exceptions import (  # typer 0.26+ carries its own click
    ClickException,
    NoArgsIsHelpError,
)
from typer.core import TyperGroup

from bnfold._version import __version__
from bnfold.cli import bench as cli_bench
from bnfold.cli import check as cli_check
from bnfold.cli import fold as cli_fold
from bnfold.cli import verify as cli_verify
from bnfold.cli.ui import emit_json, escape, printable
from bnfold.errors import EXIT_OK

__all__ = ["app", "entry", "escape", "main", "printable"]

COMMANDS = ("fold", "inspect", "check", "verify", "bench", "schema")
_ROOT_OPTIONS = ("--help", "-h", "--version", "--install-completion", "--show-completion")


class _DefaultToFold(TyperGroup):
    """``bnfold MODEL`` means ``bnfold fold MODEL``: a first word that is no command is a model.

    Options may come before the command (``bnfold -q check m.onnx``): the command name is moved
    to the front. Usage errors name what was typed (a file name, an unknown option): their
    message is made printable before click shows it, and with ``--json`` a JSON document
    says so on stdout.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = self.command_first(args)
        ctx.meta["bnfold.args"] = args
        with _usage_errors(args):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors(ctx.meta.get("bnfold.args", ())):
            return super().invoke(ctx)

    def command_first(self, args: list[str]) -> list[str]:
        """``args`` with the command name first (``fold`` when none is named)."""
        if not args or args[0] in self.commands or args[0] in _ROOT_OPTIONS:
            return args
        takes_value = {
            name
            for cmd in self.commands.values()
            for p in cmd.params
            if getattr(p, "param_type_name", "") == "option"
            and not getattr(p, "is_flag", False)
            and not getattr(p, "count", False)
            for name in p.opts
        }
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in self.commands:
                return [arg, *args[:i], *args[i + 1 :]]
            if arg == "--" or not arg.startswith("-") or arg == "-":
                break
            i += 2 if arg in takes_value else 1
        return ["fold", *args]


@contextlib.contextmanager
def _usage_errors(args: Sequence[str]) -> Iterator[None]:
    try:
        yield
    except ClickException as exc:
        if "--json" in args:
            from bnfold.cli.documents import error_document

            command = args[0] if args and args[0] in COMMANDS else "fold"
            emit_json(error_document(command, exc.exit_code, "UsageError", exc.format_message()))
        if not isinstance(exc, NoArgsIsHelpError):  # that message is bnfold's own help text
            exc.message = printable(exc.message)
        raise


app = typer.Typer(
    cls=_DefaultToFold,
    help="Fold BatchNormalization (and per-channel Mul/Add scale layers) into the "
    "Conv/ConvTranspose/Gemm/MatMul before it, or the unpadded Conv/Gemm after it, and prove "
    "with onnxruntime that the folded model gives the same outputs.\n\n"
    "bnfold MODEL is short for bnfold fold MODEL.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnfold {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Fold BatchNormalization into the layer before it, verified with onnxruntime."""


for _module in (cli_fold, cli_check, cli_verify, cli_bench):
    _module.register(app)


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema (draft 2020-12) that every --json document validates against."""
    from bnfold.cli.schema import SCHEMA

    emit_json(SCHEMA)
    raise typer.Exit(EXIT_OK)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line. Usage errors exit 2, Ctrl-C exits 130 (typer's handling)."""
    app(args=list(argv) if argv is not None else None, prog_name="bnfold")


#: The process that installed the SIGTERM handler; a forked batch worker (-j) inherits it.
_MAIN_PID = os.getpid()


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: staging and temporary folders are removed on the way out, and
    a verification child is killed (``subprocess.run`` kills it on any exception).

    With -j the batch's worker processes (forked, with this handler) are told too: each unwinds
    the model it is on, and ``fold_file`` starts no other, so the batch ends at once.
    """
    from bnfold import api

    api.stop(128 + signum)
    if os.getpid() == _MAIN_PID:
        import multiprocessing

        for pid in [p.pid for p in multiprocessing.active_children() if p.pid]:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
    raise SystemExit(128 + signum)


def entry() -> None:
    """The ``bnfold`` console script and ``python -m bnfold``: ``main``, then a fast exit.

    By the time a command returns, every file is written, renamed and closed and every child
    process has been waited for; what a normal interpreter exit still does is free the model and
    the folded weights object by object, 10% of a run on a 100 MB model. So the streams are
    flushed and the process ends there (normally under a coverage tool, which writes at exit).
    """
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if "coverage" in sys.modules:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)
