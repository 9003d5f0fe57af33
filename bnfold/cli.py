"""The ``bnfold`` command: parses, calls the API, renders. No folding logic lives here.

stdout carries only results meant for programs (one JSON document with ``--json``); tables,
progress, warnings and errors go to stderr. Exit codes: 0 ok (also "nothing to fold"),
1 verification failed or ``check`` found a foldable BatchNormalization, 2 usage error,
3 unusable input.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer._click.exceptions import ClickException  # typer 0.26+ carries its own click
from typer.core import TyperGroup

from bnfold import __version__
from bnfold.api import VerifyOptions, verify_with
from bnfold.batch import Mode, Outcome, collect_tasks, exit_code, run_tasks
from bnfold.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK, BnfoldError, UsageError
from bnfold.report import FoldReport

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from bnfold.verification import VerifyReport


#: Characters that a terminal acts on instead of showing: C0 controls (escape sequences start
#: with ESC), DEL, C1 controls, and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _code_point(match: re.Match[str]) -> str:
    n = ord(match.group())
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``): file and node
    names come from untrusted models and command lines and must not drive the terminal."""
    return _CONTROL.sub(_code_point, text)


def escape(text: str) -> str:
    """Text shown literally by rich: no markup, no control characters (rich itself is imported
    only when something is printed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(text))


def _table(title: str) -> Table:
    from rich.table import Table

    return Table(title=escape(title), title_justify="left")


COMMANDS = ("fold", "inspect", "check", "verify", "bench")


class _DefaultToFold(TyperGroup):
    """``bnfold MODEL`` means ``bnfold fold MODEL``: a first word that is no command is a model.

    Usage errors name what was typed (a file name, an unknown option): their message is made
    printable before click shows it.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["fold", *args]
        with _printable_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        with _printable_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _printable_usage_errors() -> Iterator[None]:
    try:
        yield
    except ClickException as exc:
        exc.message = printable(exc.message)
        raise


app = typer.Typer(
    cls=_DefaultToFold,
    help="Fold BatchNormalization (and per-channel Mul/Add scale layers) into the "
    "Conv/ConvTranspose/Gemm/MatMul before it, or the unpadded Conv/Gemm after it, and prove "
    "with onnxruntime that the folded model gives the same outputs.\n\n"
    "bnfold MODEL is short for bnfold fold MODEL.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class _Ui:
    """The one place output is produced: JSON to stdout, everything for people to stderr."""

    def __init__(self, *, quiet: bool = False, debug: bool = False) -> None:
        self.quiet = quiet
        self.debug = debug
        self._err: Console | None = None

    @property
    def err(self) -> Console:
        """The stderr console, made on first use (a quiet run that succeeds never needs rich)."""
        if self._err is None:
            from rich.console import Console

            no_color = bool(os.environ.get("NO_COLOR"))
            self._err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)
            if not self._err.is_terminal:
                self._err.width = 160  # logs and pipes: do not squeeze tables to 80 columns
        return self._err

    def status(self, text: str) -> Any:
        """A spinner on a terminal while something long runs (nothing when quiet or piped)."""
        import contextlib

        if self.quiet or not self.err.is_terminal:
            return contextlib.nullcontext()
        return self.err.status(text)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.err.print(text)

    def show(self, make: Callable[[], Any]) -> None:
        """Print what ``make`` builds (a table), building it only when it will be shown."""
        if not self.quiet:
            self.err.print(make())

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(text)}")

    def error(self, text: str, trace: str | None = None) -> None:
        if self.debug:
            if trace is None and sys.exc_info()[1] is not None:
                trace = traceback.format_exc()
            if trace:
                lines = trace.rstrip("\n").split("\n")
                self.err.print("\n".join(printable(line) for line in lines), markup=False)
        self.err.print(f"[red]error:[/red] {escape(text)}")

    @staticmethod
    def emit_json(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
        sys.stdout.flush()


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


# -- shared options --------------------------------------------------------------------------

JSON_OPT = typer.Option(False, "--json", help="Print one JSON document on stdout.")
QUIET_OPT = typer.Option(False, "-q", "--quiet", help="Print only warnings and errors.")
DEBUG_OPT = typer.Option(False, "--debug", help="Show tracebacks for errors.")
SHAPE_OPT = typer.Option(
    None,
    "--input-shape",
    metavar="NAME:DIMS",
    help="Concrete shape for an input with symbolic dims, e.g. image:1x3x224x224 (repeatable). "
    "Default: 1 for the first axis, 16 for other unknown dims.",
)
INPUTS_OPT = typer.Option(
    None, "--inputs", help="A .npz file with your own input arrays, keyed by input name."
)
SAMPLES_OPT = typer.Option(1, "--samples", min=1, help="Random input samples to compare.")
SEED_OPT = typer.Option(0, "--seed", help="Seed for the random inputs.")
RTOL_OPT = typer.Option(
    None, "--rtol", help="Relative tolerance for every output [default: by dtype]."
)
ATOL_OPT = typer.Option(
    None, "--atol", help="Absolute tolerance for every output [default: by dtype]."
)
OUT_TOL_OPT = typer.Option(
    None,
    "--output-tolerance",
    metavar="NAME:RTOL:ATOL",
    help="Tolerances for one output, e.g. logits:1e-3:1e-4 (repeatable; empty keeps default).",
)
# readable=False: bnfold itself says why a model cannot be read (exit 3), not click (exit 2)
MODELS_ARG = typer.Argument(
    ...,
    help="ONNX model files or folders of them.",
    show_default=False,
    metavar="MODEL...",
    readable=False,
)
TIMEOUT_OPT = typer.Option(600.0, "--timeout", help="Seconds verification may take.")


def _input_shapes(texts: Sequence[str] | None) -> dict[str, Sequence[int]]:
    from bnfold.inputs import parse_input_shape

    shapes: dict[str, Sequence[int]] = {}
    for text in texts or ():
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def _verify_options(
    input_shape: Sequence[str] | None,
    inputs: Path | None,
    samples: int,
    seed: int,
    rtol: float | None,
    atol: float | None,
    output_tolerance: Sequence[str] | None,
    timeout: float,
    require_verified: bool = False,
) -> VerifyOptions:
    return VerifyOptions(
        input_shapes=_input_shapes(input_shape) or None,
        inputs=inputs,
        samples=samples,
        seed=seed,
        rtol=rtol,
        atol=atol,
        output_tolerances=_output_tolerances(output_tolerance or ()),
        timeout=timeout,
        require_verified=require_verified,
    )


def _output_tolerances(texts: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
    found: dict[str, tuple[float | None, float | None]] = {}
    for text in texts:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise UsageError(
                f"--output-tolerance '{text}': expected NAME:RTOL:ATOL",
                hint="e.g. logits:1e-3:1e-4",
            )
        try:
            rtol, atol = (float(p) if p else None for p in parts[1:])
        except ValueError:
            raise UsageError(
                f"--output-tolerance '{text}': RTOL and ATOL must be numbers",
                hint="e.g. logits:1e-3:1e-4",
            ) from None
        found[parts[0]] = (rtol, atol)
    return found


# -- rendering --------------------------------------------------------------------------------


def _decision_table(report: FoldReport, title: str, *, only_skipped: bool = False) -> Table:
    table = _table(title)
    table.add_column("node", overflow="fold")
    table.add_column("graph", overflow="fold")
    table.add_column("after")
    table.add_column("result")
    table.add_column("why", overflow="fold")
    for d in report.decisions:
        if only_skipped and d.folded:
            continue
        producer = d.producer or "-"
        if d.through:
            producer += " via " + ", ".join(d.through)
        result = "[green]folded[/green]" if d.folded else f"[yellow]{d.reason}[/yellow]"
        label = d.node or f"-> {d.output}"
        table.add_row(
            escape(label if d.op == "BatchNormalization" else f"{d.op} {label}"),
            escape(d.graph),
            escape(producer),
            result,
            escape(d.message),
        )
    return table


def _summary(report: FoldReport, verb: str = "folded") -> str:
    line = f"{report.bn_folded} of {report.bn_total} BatchNormalization"
    scales = report.total - report.bn_total
    if scales:
        line += f" and {report.folded - report.bn_folded} of {scales} scale Mul/Add"
    line += f" {verb}; nodes {report.nodes_before} -> {report.nodes_after}"
    if report.skipped:
        line += "; not folded: " + ", ".join(f"{k} x{v}" for k, v in report.reasons().items())
    return line


def _verification_line(v: VerifyReport) -> str:
    worst = next(iter(v.worst(1)), None)
    where = f"{v.backend}, {v.samples} sample{'s' if v.samples != 1 else ''}"
    if v.status == "unverified":
        return f"[yellow]unverified[/yellow]: {escape(v.reason or '')}"
    if worst is None:
        return f"verification {v.status} ({where})"
    color = "green" if v.status == "passed" else "red"
    return (
        f"verification [{color}]{v.status}[/{color}] ({where}): {len(v.outputs)} output(s), "
        f"worst max abs error {worst.max_abs:.3g} in '{escape(worst.name)}' "
        f"(rtol {worst.rtol:g}, atol {worst.atol:g})"
    )


def _comparison_table(v: VerifyReport, title: str) -> Table:
    table = _table(title)
    for col in ("output", "dtype", "shape", "max abs", "max rel", "mean abs", "needs atol"):
        table.add_column(col, justify="right" if col not in ("output", "dtype") else "left")
    table.add_column("tolerance")
    table.add_column("result")
    for o in v.outputs:
        table.add_row(
            escape(o.name),
            o.dtype,
            "x".join(str(d) for d in o.shape),
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            f"{o.mean_abs:.3g}",
            f"{o.min_atol:.3g}",
            f"rtol {o.rtol:g}, atol {o.atol:g}",
            "[green]ok[/green]" if o.passed else f"[red]{o.mismatched} differ[/red]",
        )
    return table


def _batch_table(outcomes: Sequence[Outcome], mode: Mode) -> Table:
    table = _table(f"bnfold {mode}: {len(outcomes)} models")
    table.add_column("model", overflow="fold")
    table.add_column("status")
    table.add_column("BN folded" if mode == "fold" else "BN foldable", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("max abs error" if mode == "fold" else "not folded", justify="right")
    for o in outcomes:
        style = {0: "green", 1: "red"}.get(o.exit_code, "red")
        if o.status in ("unverified", "unchanged", "inspected", "clean"):
            style = "yellow" if o.status == "unverified" else "green"
        r = o.result.report if o.result else None
        counts = "-"
        if r is not None:
            counts = f"{r.bn_folded}/{r.bn_total}"
            if r.folded > r.bn_folded:
                counts += f" +{r.folded - r.bn_folded} Mul/Add"
        nodes = f"{r.nodes_before} -> {r.nodes_after}" if r and mode == "fold" else "-"
        if mode != "fold":
            last = ", ".join(f"{k} x{v}" for k, v in r.reasons().items()) if r else ""
        else:
            v = o.result.verification if o.result else None
            last = f"{max((x.max_abs for x in v.outputs), default=0.0):.3g}" if v else "-"
        table.add_row(
            escape(str(o.input)), f"[{style}]{o.status}[/{style}]", counts, nodes, escape(last)
        )
    return table


def _document(command: str, outcomes: Sequence[Outcome], code: int) -> dict[str, Any]:
    reports = [o.result.report for o in outcomes if o.result is not None]
    return {
        "bnfold": __version__,
        "command": command,
        "exit_code": code,
        "summary": {
            "models": len(outcomes),
            "errors": sum(o.status == "error" for o in outcomes),
            "bn_total": sum(r.bn_total for r in reports),
            "folded": sum(r.folded for r in reports),
            "skipped": sum(r.skipped for r in reports),
            "statuses": _count(o.status for o in outcomes),
        },
        "models": [o.to_dict() for o in outcomes],
    }


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def _run(
    mode: Mode,
    models: list[Path],
    ui: _Ui,
    *,
    as_json: bool,
    output: str | None = None,
    in_place: bool = False,
    verify: VerifyOptions | None = None,
    force: bool = False,
    jobs: int = 1,
) -> int:
    """Collect, run and render one batch (a single model is a batch of one)."""
    tasks = collect_tasks(models, output, in_place=in_place, write=mode == "fold")
    if len(tasks) > 1 and not ui.quiet:
        from rich.progress import Progress

        with Progress(console=ui.err, transient=True) as progress:
            bar = progress.add_task(f"{mode}ing", total=len(tasks))
            outcomes = run_tasks(
                tasks,
                mode,
                verify=verify,
                force=force,
                in_place=in_place,
                jobs=jobs,
                on_done=lambda _: progress.advance(bar),
            )
    else:
        outcomes = run_tasks(tasks, mode, verify=verify, force=force, in_place=in_place, jobs=jobs)
    code = exit_code(outcomes)
    for o in outcomes:
        if o.error is not None:
            ui.error(o.error, o.trace)
        elif o.status == "unverified" and o.result and o.result.verification:
            ui.warn(f"{o.input}: written unverified: {o.result.verification.reason}")
    if as_json:
        ui.emit_json(_document(mode, outcomes, code))
    if len(outcomes) == 1:
        _render_one(outcomes[0], mode, ui)
    else:
        ui.show(lambda: _batch_table(outcomes, mode))
    return code


def _command_error(ui: _Ui, command: str, exc: BnfoldError, as_json: bool) -> typer.Exit:
    """An error before any model ran (bad option, empty folder): one line, and JSON if asked."""
    ui.error(str(exc))
    if as_json:
        ui.emit_json(
            {
                "bnfold": __version__,
                "command": command,
                "exit_code": exc.exit_code,
                "error": {"type": type(exc).__name__, "message": str(exc)},
                "summary": None,
                "models": [],
            }
        )
    return typer.Exit(exc.exit_code)


def _render_one(o: Outcome, mode: Mode, ui: _Ui) -> None:
    if o.result is None or ui.quiet:  # everything below is for people; --quiet drops it
        return
    report = o.result.report
    if mode == "inspect":
        ui.show(lambda: _decision_table(report, str(o.input)))
        ui.say(escape(_summary(report, "foldable")))
        return
    if mode == "check":
        if report.folded:
            ui.show(lambda: _decision_table(report, str(o.input)))
        verdict = f"{report.folded} foldable node(s) remain" if report.folded else "clean"
        ui.say(f"{escape(str(o.input))}: {verdict}")
        return
    if report.skipped:
        ui.show(lambda: _decision_table(report, f"{o.input}: not folded", only_skipped=True))
    ui.say(escape(_summary(report)))
    v = o.result.verification
    if v is not None:
        if v.status == "failed":
            ui.show(lambda: _comparison_table(v, "worst outputs"))
        ui.say(_verification_line(v))
    elif report.changed and o.result.written:
        ui.say("verification skipped (--no-verify)")
    for path in o.result.written:
        ui.say(f"wrote {escape(str(path))}")


# -- commands ---------------------------------------------------------------------------------


@app.command("fold")
def fold_cmd(
    models: list[Path] = MODELS_ARG,
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output file, or a folder (an existing one, or ending in /) [default: MODEL's stem + "
        "'.folded.onnx' beside it].",
        show_default=False,
    ),
    in_place: bool = typer.Option(False, "--in-place", help="Overwrite each MODEL itself."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Write without checking outputs."),
    force: bool = typer.Option(False, "--force", help="Write even when verification fails."),
    require_verified: bool = typer.Option(
        False,
        "--require-verified",
        help="Treat 'could not verify' (no backend can run the model) as a failure.",
    ),
    input_shape: list[str] | None = SHAPE_OPT,
    inputs: Path | None = INPUTS_OPT,
    samples: int = SAMPLES_OPT,
    seed: int = SEED_OPT,
    rtol: float | None = RTOL_OPT,
    atol: float | None = ATOL_OPT,
    output_tolerance: list[str] | None = OUT_TOL_OPT,
    timeout: float = TIMEOUT_OPT,
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="Models processed in parallel."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Fold, verify with onnxruntime, and write each MODEL (the default command)."""
    ui = _Ui(quiet=quiet, debug=debug)
    try:
        if no_verify and (require_verified or force):
            raise UsageError("--no-verify contradicts --require-verified and --force")
        verify = (
            None
            if no_verify
            else _verify_options(
                input_shape,
                inputs,
                samples,
                seed,
                rtol,
                atol,
                output_tolerance,
                timeout,
                require_verified,
            )
        )
        code = _run(
            "fold",
            models,
            ui,
            as_json=as_json,
            output=output,
            in_place=in_place,
            verify=verify,
            force=force,
            jobs=jobs,
        )
    except BnfoldError as exc:
        raise _command_error(ui, "fold", exc, as_json) from None
    raise typer.Exit(code)


def _report_only(mode: Mode, models: list[Path], as_json: bool, quiet: bool, debug: bool) -> None:
    """``inspect`` and ``check``: fold in memory, report, write nothing."""
    ui = _Ui(quiet=quiet, debug=debug)
    try:
        code = _run(mode, models, ui, as_json=as_json)
    except BnfoldError as exc:
        raise _command_error(ui, mode, exc, as_json) from None
    raise typer.Exit(code)


@app.command("inspect")
def inspect_cmd(
    models: list[Path] = MODELS_ARG,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Show every BatchNormalization and scale Mul/Add, whether it would fold and why not.

    Writes nothing.
    """
    _report_only("inspect", models, as_json, quiet, debug)


@app.command("check")
def check_cmd(
    models: list[Path] = MODELS_ARG,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Exit 1 if a MODEL still has a foldable BatchNormalization or scale layer (a CI gate).

    Writes nothing.
    """
    _report_only("check", models, as_json, quiet, debug)


@app.command("verify")
def verify_cmd(
    original: Path = typer.Argument(
        ..., help="The reference model.", show_default=False, readable=False
    ),
    candidate: Path = typer.Argument(
        ..., help="The model to compare with it.", show_default=False, readable=False
    ),
    input_shape: list[str] | None = SHAPE_OPT,
    inputs: Path | None = INPUTS_OPT,
    samples: int = SAMPLES_OPT,
    seed: int = SEED_OPT,
    rtol: float | None = RTOL_OPT,
    atol: float | None = ATOL_OPT,
    output_tolerance: list[str] | None = OUT_TOL_OPT,
    timeout: float = TIMEOUT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Run two models with the same inputs and outputs and compare every output.

    Exit 0 when all outputs match, 1 when one differs, 3 when neither onnxruntime nor
    onnx.reference can run the models.
    """
    ui = _Ui(quiet=quiet, debug=debug)
    try:
        opts = _verify_options(
            input_shape, inputs, samples, seed, rtol, atol, output_tolerance, timeout
        )
        report = verify_with(original, candidate, opts)
    except BnfoldError as exc:
        raise _command_error(ui, "verify", exc, as_json) from None
    code = {"passed": EXIT_OK, "failed": EXIT_FAILED}.get(report.status, EXIT_INPUT)
    if as_json:
        ui.emit_json(
            {
                "bnfold": __version__,
                "command": "verify",
                "exit_code": code,
                "original": str(original),
                "candidate": str(candidate),
                "verification": report.to_dict(),
            }
        )
    if report.status == "unverified":
        ui.error(f"{original} vs {candidate}: could not run the models ({report.reason})")
    else:
        ui.show(lambda: _comparison_table(report, f"{original} vs {candidate}"))
        ui.say(_verification_line(report))
    for note in report.notes:
        ui.say(f"note: {escape(note)}")
    raise typer.Exit(code)


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


from bnfold import cli_bench  # noqa: E402, F401  (registers `bnfold bench` on app)
