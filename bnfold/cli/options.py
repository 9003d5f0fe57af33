"""Option groups: each declares some command-line options and builds one API object from them.

As Polygraphy's argument groups do: ``VerifyGroup`` turns ``--input-shape``, ``--rtol``, ...
into a ``bnfold.VerifyOptions``, ``OutputGroup`` turns ``--json``/``-q``/``-v``/``--debug`` into the
``Ui``. ``command()`` adds a group's options to a command's signature and hands the command the
built object; a ``BnfoldError`` raised by a builder or the command is rendered once, here.
Nothing in this module imports onnx or numpy: ``--help`` must stay fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bnfold.cli.ui import Ui
from bnfold.errors import BnfoldError, UsageError
from bnfold.verification.report import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from bnfold.api import VerifyOptions


@dataclass(frozen=True)
class Param:
    """One command-line parameter: its Python name, type and typer declaration."""

    name: str
    annotation: Any
    default: Any


class OptionGroup:
    """Options that together build one object the API takes (or the Ui)."""

    params: tuple[Param, ...] = ()

    def build(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError


class OutputGroup(OptionGroup):
    """``--json``, ``-q/--quiet``, ``--debug`` -> the ``Ui`` the command prints through."""

    params = (
        Param("as_json", bool, typer.Option(False, "--json", help="Print one JSON document.")),
        Param(
            "quiet",
            bool,
            typer.Option(False, "-q", "--quiet", help="Print only warnings and errors."),
        ),
        Param(
            "verbose",
            bool,
            typer.Option(
                False, "-v", "--verbose", help="List every node, not a summary by reason."
            ),
        ),
        Param("debug", bool, typer.Option(False, "--debug", help="Show tracebacks for errors.")),
    )

    def build(self, values: dict[str, Any]) -> Ui:
        return Ui(
            as_json=values["as_json"],
            quiet=values["quiet"],
            debug=values["debug"],
            verbose=values["verbose"],
        )


SHAPE_OPT = typer.Option(
    None,
    "--input-shape",
    metavar="NAME:DIMS",
    help="Concrete shape for an input with symbolic dims, e.g. image:1x3x224x224 (repeatable). "
    "Default: 1 for the first axis, 16 for other unknown dims.",
)
SEED_OPT = typer.Option(0, "--seed", min=0, help="Seed for the random inputs.")


class VerifyGroup(OptionGroup):
    """The verification options -> ``VerifyOptions``; with ``policy``, also ``--no-verify``
    (-> None) and ``--require-verified``."""

    def __init__(self, *, policy: bool = False) -> None:
        self.policy = policy
        params = [
            Param("input_shape", list[str] | None, SHAPE_OPT),
            Param(
                "inputs",
                Path | None,
                typer.Option(
                    None,
                    "--inputs",
                    help="A .npz file with your own input arrays, keyed by input name.",
                ),
            ),
            Param(
                "samples",
                int,
                typer.Option(1, "--samples", min=1, help="Random input samples to compare."),
            ),
            Param("seed", int, SEED_OPT),
            Param(
                "rtol",
                float | None,
                typer.Option(
                    None, "--rtol", help="Relative tolerance for every output [default: by dtype]."
                ),
            ),
            Param(
                "atol",
                float | None,
                typer.Option(
                    None, "--atol", help="Absolute tolerance for every output [default: by dtype]."
                ),
            ),
            Param(
                "output_tolerance",
                list[str] | None,
                typer.Option(
                    None,
                    "--output-tolerance",
                    metavar="NAME:RTOL:ATOL",
                    help="Tolerances for one output, e.g. logits:1e-3:1e-4 (repeatable; empty "
                    "keeps default).",
                ),
            ),
            Param(
                "timeout",
                float,
                typer.Option(
                    DEFAULT_TIMEOUT,
                    "--timeout",
                    help="Seconds verification may take (past them: written unverified, exit 4).",
                ),
            ),
        ]
        if policy:
            params += [
                Param(
                    "no_verify",
                    bool,
                    typer.Option(False, "--no-verify", help="Write without checking outputs."),
                ),
                Param(
                    "require_verified",
                    bool,
                    typer.Option(
                        False,
                        "--require-verified",
                        help="Treat 'could not verify' (timeout, crash, no backend can run the "
                        "model) as a failure: exit 1, nothing written.",
                    ),
                ),
            ]
        self.params = tuple(params)

    def build(self, values: dict[str, Any]) -> VerifyOptions | None:
        from bnfold.api import VerifyOptions

        if self.policy and values["no_verify"]:
            if values["require_verified"]:
                raise UsageError("--no-verify contradicts --require-verified")
            return None
        return VerifyOptions(
            input_shapes=input_shapes(values["input_shape"]) or None,
            inputs=values["inputs"],
            samples=values["samples"],
            seed=values["seed"],
            rtol=values["rtol"],
            atol=values["atol"],
            output_tolerances=output_tolerances(values["output_tolerance"] or ()),
            timeout=values["timeout"],
            require_verified=bool(self.policy and values["require_verified"]),
        )


def input_shapes(texts: Sequence[str] | None) -> dict[str, Sequence[int]]:
    """``NAME:1x3x224x224`` texts -> the ``input_shapes`` mapping."""
    from bnfold.runtime.inputs import parse_input_shape

    shapes: dict[str, Sequence[int]] = {}
    for text in texts or ():
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def output_tolerances(texts: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
    """``NAME:RTOL:ATOL`` texts -> the ``output_tolerances`` mapping."""
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


def command_error(ui: Ui, command: str, exc: BnfoldError) -> int:
    """An error before any model ran (bad option, empty folder): one line, and JSON if asked."""
    from bnfold.cli.documents import error_document

    ui.error(exc.cli_message)
    ui.emit(error_document(command, exc.exit_code, type(exc).__name__, exc.cli_message))
    return exc.exit_code


def command(
    app: typer.Typer, name: str, **groups: OptionGroup
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register ``func`` as command ``name``: its own parameters plus every group's options.

    ``func`` takes ``ui`` (always: the OutputGroup) and one keyword per group with the built
    object, and returns the exit code.
    """
    groups = {**groups, "ui": OutputGroup()}

    def register(func: Callable[..., int]) -> Callable[..., int]:
        own = [
            p.replace(annotation=_evaluate(p.annotation, func))
            for p in inspect.signature(func).parameters.values()
            if p.name not in groups
        ]
        extra = [
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=p.annotation
            )
            for group in groups.values()
            for p in group.params
        ]

        def run(**values: Any) -> None:
            ui = groups["ui"].build(values)
            try:
                built = {key: g.build(values) for key, g in groups.items() if key != "ui"}
                code = func(**{p.name: values[p.name] for p in own}, ui=ui, **built)
            except BnfoldError as exc:
                code = command_error(ui, name, exc)
            raise typer.Exit(code)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__doc__ = func.__doc__
        run.__name__ = func.__name__
        app.command(name)(run)
        return func

    return register


def _evaluate(annotation: Any, func: Callable[..., Any]) -> Any:
    """A string annotation (``from __future__ import annotations``) as the type it names."""
    if isinstance(annotation, str):
        return eval(annotation, func.__globals__)  # the command module's own names
    return annotation
