"""``bnfold bench``: parse its options, call ``bnfold.benchmark`` per model, render the results.

Registered on the ``app`` of ``bnfold.cli`` by ``register``. One model
that onnxruntime cannot run does not stop the others (it ends the command with exit 3); a bad
option stops everything (exit 2); with ``--baseline`` a folded model that got slower beyond the
noise exits 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bnfold.bench.defaults import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SLOWDOWN,
    DEFAULT_TARGET_CI,
    DEFAULT_WARMUP,
)
from bnfold.cli.bench_render import render, render_baseline
from bnfold.cli.documents import header
from bnfold.cli.fold import MODELS_ARG
from bnfold.cli.options import SEED_OPT, SHAPE_OPT, OutputGroup
from bnfold.cli.options import input_shapes as _input_shapes
from bnfold.cli.ui import Ui, escape
from bnfold.errors import EXIT_FAILED, EXIT_OK, BnfoldError, InputError, UsageError

if TYPE_CHECKING:
    from bnfold.bench.report import BenchReport

JSON_OPT, QUIET_OPT, _VERBOSE_OPT, DEBUG_OPT = (p.default for p in OutputGroup.params)


def register(parent: typer.Typer) -> None:
    """Add ``bench`` to ``parent``."""
    parent.command("bench")(bench_cmd)


def bench_cmd(
    models: list[Path] = MODELS_ARG,
    folded: Path | None = typer.Option(
        None, "--folded", help="The folded form of a single MODEL [default: fold in memory]."
    ),
    provider: list[str] | None = typer.Option(
        None,
        "--provider",
        metavar="NAME",
        help="onnxruntime execution provider (repeatable) [default: CPUExecutionProvider].",
    ),
    level: list[str] | None = typer.Option(
        None,
        "--level",
        metavar="LEVEL",
        help="Optimization level for the original: disable|basic|extended|all (repeatable) "
        "[default: disable and basic].",
    ),
    folded_level: str = typer.Option(
        "disable",
        "--folded-level",
        metavar="LEVEL",
        help="Optimization level for the folded model.",
    ),
    batch_size: list[int] | None = typer.Option(
        None,
        "--batch-size",
        metavar="N",
        help="Batch size for inputs with a symbolic first axis (repeatable).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="onnxruntime intra-op threads [default: onnxruntime's]."
    ),
    iterations: int = typer.Option(
        DEFAULT_ITERATIONS, "--iterations", "-n", min=1, help="Minimum timed rounds."
    ),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", min=0, help="Untimed runs first."),
    max_seconds: float = typer.Option(
        DEFAULT_MAX_SECONDS, "--max-seconds", help="Timing budget per model, in seconds."
    ),
    target_ci: float = typer.Option(
        DEFAULT_TARGET_CI,
        "--target-ci",
        help="Stop once every speedup's 95% interval is within +-this fraction.",
    ),
    input_shape: list[str] | None = SHAPE_OPT,
    seed: int = SEED_OPT,
    baseline: Path | None = typer.Option(
        None, "--baseline", metavar="FILE", help="A previous bench --json: exit 1 on slowdown."
    ),
    max_slowdown: float = typer.Option(
        DEFAULT_MAX_SLOWDOWN,
        "--max-slowdown",
        help="With --baseline: slowdown allowed beyond the measured noise (0.05 = 5%).",
    ),
    relative: bool = typer.Option(
        False,
        "--relative",
        help="With --baseline: judge the folded model by its change over the original's in "
        "the same run (cancels a machine busier than when the baseline was taken).",
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw the latencies to this image (needs bnfold[plot])."
    ),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Time each MODEL before and after folding in onnxruntime.

    The original runs at each --level (default ORT_DISABLE_ALL and ORT_ENABLE_BASIC, where
    onnxruntime fuses Conv+BatchNormalization itself), the folded model at --folded-level, on
    each --provider and --batch-size, in rotation so machine noise hits all alike. Rounds go on
    until every speedup's 95% interval is within --target-ci or --max-seconds ends ("noisy").
    Exit 0; 1 when --baseline shows a folded model slower beyond the noise; 2 for bad options
    (an unavailable provider, a bad level); 3 for a model onnxruntime cannot run.
    """
    from bnfold.batch import collect_models
    from bnfold.bench.baseline import compare_baseline, load_baseline
    from bnfold.bench.plot import check_plot_available
    from bnfold.bench.plot import plot as draw
    from bnfold.bench.report import level_name
    from bnfold.bench.run import benchmark

    ui = Ui(as_json=as_json, quiet=quiet, debug=debug)
    try:
        if plot is not None:
            check_plot_available()
        levels = [level_name(v) for v in level or ("disable", "basic")]
        fl = level_name(folded_level)
        base_doc = load_baseline(baseline) if baseline is not None else None
        if max_slowdown < 0:
            raise UsageError("--max-slowdown must be at least 0")
        paths = collect_models(models)
        if folded is not None and len(paths) > 1:
            raise UsageError("--folded needs exactly one MODEL", hint="drop --folded to fold each")
        options: dict[str, Any] = {
            "providers": provider or ("CPUExecutionProvider",),
            "levels": levels,
            "folded_level": fl,
            "batch_sizes": batch_size or (),
            "iterations": iterations,
            "warmup": warmup,
            "threads": threads,
            "max_seconds": max_seconds,
            "target_ci": target_ci,
            "input_shapes": _input_shapes(input_shape) or None,
            "seed": seed,
        }
        reports: list[BenchReport] = []
        entries: list[dict[str, Any]] = []
        errors: list[tuple[Path, BnfoldError]] = []
        for k, path in enumerate(paths, 1):
            where = f" ({k}/{len(paths)})" if len(paths) > 1 else ""
            try:
                with ui.status(f"benchmarking {path}{where}"):
                    report = benchmark(path, folded, **options)
            except InputError as exc:
                ui.error(exc.cli_message)
                errors.append((path, exc))
                entries.append(_error_entry(path, exc))
                continue
            reports.append(report)
            entries.append({**report.to_dict(), "error": None})
            render(ui, report)
        comparison = None
        if base_doc is not None:
            comparison = compare_baseline(
                reports, base_doc, max_slowdown=max_slowdown, relative=relative, path=str(baseline)
            )
        if plot is not None and reports:
            draw(reports, plot)
    except BnfoldError as exc:
        raise _stopped(ui, exc, as_json) from None
    code = max([e.exit_code for _, e in errors], default=EXIT_OK)
    if comparison is not None:
        render_baseline(ui, comparison)
        if comparison.regressed:
            code = max(code, EXIT_FAILED)
            how = " relative to the original" if relative else ""
            ui.tell(
                f"[red]slower:[/red] a folded model is slower{how} than in "
                f"{escape(str(baseline))} beyond the noise (+{max_slowdown:.0%} allowed)"
            )
        else:
            ui.say(f"no folded model slower than in {escape(str(baseline))} beyond the noise")
        if not relative and any(
            ch.run == "original" and ch.verdict != "same" for ch in comparison.changes
        ):
            ui.warn(
                "the original model's latency changed too: the machine or onnxruntime differs "
                "from the baseline's; --relative judges the folded model against it instead"
            )
    if as_json:
        ui.emit(
            _finite(
                {
                    **header("bench", code),
                    "models": [str(p) for p in paths],
                    "plot": str(plot) if plot and reports else None,
                    "error": entries_error(errors),
                    "benches": entries,
                    "baseline": comparison.to_dict() if comparison else None,
                }
            )
        )
    if plot is not None and reports:
        ui.say(f"wrote {escape(str(plot))}")
    raise typer.Exit(code)


def _finite(value: Any) -> Any:
    """The document with every number that is not finite (a ratio over a zero median) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _stopped(ui: Ui, exc: BnfoldError, as_json: bool) -> typer.Exit:
    """A bad option or baseline stops the whole command: one line, and the document if asked."""
    ui.error(exc.cli_message)
    if as_json:
        ui.emit(
            {
                **header("bench", exc.exit_code),
                "error": {"type": type(exc).__name__, "message": exc.cli_message},
                "summary": None,
                "models": [],
                "benches": [],
                "baseline": None,
            }
        )
    return typer.Exit(exc.exit_code)


def _error_entry(path: Path, exc: BnfoldError) -> dict[str, Any]:
    return {
        "model": str(path),
        "runs": [],
        "speedup": {},
        "speedups": [],
        "noisy": False,
        "error": {"type": type(exc).__name__, "message": str(exc)},
    }


def entries_error(errors: list[tuple[Path, BnfoldError]]) -> dict[str, str] | None:
    """The first model's error, at the top of the document as for every other command."""
    if not errors:
        return None
    path, exc = errors[0]
    return {"type": type(exc).__name__, "message": str(exc), "model": str(path)}
