"""``bnfold bench MODEL``: inference latency before and after folding, in onnxruntime.

Moved unchanged from ``bnfold/cli.py`` (imports aside): a new bench command replaces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bnfold._defaults import DEFAULT_ITERATIONS, DEFAULT_WARMUP
from bnfold.cli_options import SEED_OPT, SHAPE_OPT, OutputGroup, command_error
from bnfold.cli_options import input_shapes as _input_shapes
from bnfold.cli_ui import Ui, escape
from bnfold.cli_ui import table as _table
from bnfold.documents import header
from bnfold.errors import EXIT_OK, BnfoldError

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.bench import BenchReport

JSON_OPT, QUIET_OPT, DEBUG_OPT = (p.default for p in OutputGroup.params)


def register(parent: typer.Typer) -> None:
    """Add ``bench`` to ``parent``."""
    parent.command("bench")(bench_cmd)


def bench_cmd(
    model: Path = typer.Argument(
        ..., help="The model to benchmark.", show_default=False, readable=False
    ),
    folded: Path | None = typer.Option(
        None, "--folded", help="Its folded form [default: fold MODEL in memory]."
    ),
    iterations: int = typer.Option(
        DEFAULT_ITERATIONS, "--iterations", "-n", min=1, help="Timed runs of each configuration."
    ),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", min=0, help="Untimed runs first."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="onnxruntime intra-op threads [default: onnxruntime's]."
    ),
    input_shape: list[str] | None = SHAPE_OPT,
    seed: int = SEED_OPT,
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw the latencies to this image (needs bnfold[plot])."
    ),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    debug: bool = DEBUG_OPT,
) -> None:
    """Time MODEL before and after folding in onnxruntime.

    The original runs at ORT_DISABLE_ALL and at ORT_ENABLE_BASIC (where onnxruntime fuses
    Conv+BatchNormalization itself), the folded model at ORT_DISABLE_ALL: session creation,
    then median, p90 and min latency after warm-up, in rotation so machine noise hits all alike.
    Exit 0, or 2/3 for bad options or a model onnxruntime cannot run.
    """
    from bnfold.bench import benchmark, check_plot_available
    from bnfold.bench import plot as draw

    ui = Ui(as_json=as_json, quiet=quiet, debug=debug)
    try:
        if plot is not None:
            check_plot_available()
        with ui.status(f"benchmarking {model} ({iterations} runs of each configuration)"):
            report = benchmark(
                model,
                folded,
                iterations=iterations,
                warmup=warmup,
                threads=threads,
                input_shapes=_input_shapes(input_shape) or None,
                seed=seed,
            )
        if plot is not None:
            draw(report, plot)
    except BnfoldError as exc:
        raise typer.Exit(command_error(ui, "bench", exc)) from None
    if as_json:
        ui.emit(
            {
                **header("bench", EXIT_OK),
                "model": str(model),
                "plot": str(plot) if plot else None,
                "bench": report.to_dict(),
            }
        )
    ui.show(lambda: _bench_table(report))
    ui.say(
        f"folded: {report.speedup:.2f}x the original's speed at ORT_DISABLE_ALL, "
        f"{report.speedup_vs_ort_basic:.2f}x onnxruntime's own ORT_ENABLE_BASIC"
    )
    for note in report.notes:
        ui.say(f"note: {escape(note)}")
    if plot is not None:
        ui.say(f"wrote {escape(str(plot))}")
    raise typer.Exit(EXIT_OK)


def _bench_table(report: BenchReport) -> Table:
    shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in report.input_shapes.items())
    table = _table(
        f"{report.original.path}  ({shapes}; {report.iterations} runs after {report.warmup} "
        f"warm-up, threads: {report.threads or 'default'})"
    )
    for column in ("configuration", "nodes", "BN", "MB", "session s", "median ms", "p90 ms"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    table.add_column("min ms", justify="right")
    table.add_column("speedup", justify="right")
    base = report.run("original", "disable_all").median_ms
    for r in report.runs:
        stats = report.folded if r.model == "folded" else report.original
        table.add_row(
            r.label,
            str(stats.nodes),
            str(stats.batchnorms),
            f"{stats.size_bytes / 1e6:.1f}",
            f"{r.session_seconds:.3f}",
            f"{r.median_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.min_ms:.3f}",
            f"{base / r.median_ms:.2f}x" if r.median_ms > 0 else "-",
        )
    return table
