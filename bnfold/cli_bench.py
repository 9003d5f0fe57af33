"""``bnfold bench``: parse its options, call ``bnfold.benchmark`` per model, render the results.

Registered on the ``app`` of ``bnfold.cli`` (imported at the bottom of that module). One model
that onnxruntime cannot run does not stop the others (it ends the command with exit 3); a bad
option stops everything (exit 2); with ``--baseline`` a folded model that got slower beyond the
noise exits 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bnfold import __version__
from bnfold.bench import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SLOWDOWN,
    DEFAULT_TARGET_CI,
    DEFAULT_WARMUP,
)
from bnfold.cli import (
    DEBUG_OPT,
    JSON_OPT,
    MODELS_ARG,
    QUIET_OPT,
    SEED_OPT,
    SHAPE_OPT,
    _input_shapes,
    _table,
    _Ui,
    app,
    escape,
)
from bnfold.errors import EXIT_FAILED, EXIT_OK, BnfoldError, InputError, UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from bnfold.bench import BaselineComparison, BenchReport, Change


@app.command("bench")
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
    from bnfold.bench import (
        benchmark,
        check_plot_available,
        collect_models,
        compare_baseline,
        level_name,
        load_baseline,
    )
    from bnfold.bench import plot as draw

    ui = _Ui(quiet=quiet, debug=debug)
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
                ui.error(str(exc))
                errors.append((path, exc))
                entries.append(_error_entry(path, exc))
                continue
            reports.append(report)
            entries.append({**report.to_dict(), "error": None})
            _render(ui, report)
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
        ui.show(lambda: _baseline_table(comparison))
        if comparison.regressed:
            code = max(code, EXIT_FAILED)
            how = " relative to the original" if relative else ""
            ui.err.print(
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
        ui.emit_json(
            _finite(
                {
                    "bnfold": __version__,
                    "command": "bench",
                    "exit_code": code,
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


def _stopped(ui: _Ui, exc: BnfoldError, as_json: bool) -> typer.Exit:
    """A bad option or baseline stops the whole command: one line, and the document if asked."""
    ui.error(str(exc))
    if as_json:
        ui.emit_json(
            {
                "bnfold": __version__,
                "command": "bench",
                "exit_code": exc.exit_code,
                "error": {"type": type(exc).__name__, "message": str(exc)},
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


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]"


def _render(ui: _Ui, report: BenchReport) -> None:
    """One model: its table, the speedup lines, and why anything was left out (warnings are
    printed even with --quiet)."""
    state = (
        f"noisy: {report.max_seconds:g} s budget ended before every interval was within "
        f"+-{report.target_ci:.0%}"
        if report.noisy
        else f"within +-{report.target_ci:.0%}"
    )
    line = f"{report.model}: {report.rounds} rounds in {report.seconds:.1f} s, {state}"
    for skip in report.skipped_batch_sizes:
        ui.warn(f"{report.model}: --batch-size {skip['batch_size']} skipped: {skip['reason']}")
    if ui.quiet:
        if report.noisy:
            ui.warn(line)
        return
    ui.show(lambda: _bench_table(report))
    for g in report.speedups:
        where = ""
        if len(report.speedups) > 1:
            where = f" ({g.provider.removesuffix('ExecutionProvider')}, batch {g.batch_size})"
        parts = []
        for key, s in g.speedups.items():
            what = "the original's speed" if key == "vs_original" else f"ORT {key[7:]}"
            parts.append(f"{s} {what}")
        ui.say(f"folded{where}: " + escape(", ".join(parts)))
    if report.noisy:
        ui.warn(line + " (try --max-seconds, --threads 1, or a quieter machine)")
    else:
        ui.say(escape(line))
    for note in report.notes:
        ui.say(f"note: {escape(note)}")


def _bench_table(report: BenchReport) -> Table:
    shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in report.input_shapes.items())
    table = _table(
        f"{report.model}  ({shapes}; {report.rounds} rounds after {report.warmup} warm-up, "
        f"threads: {report.threads or 'default'})"
    )
    several = len({r.provider for r in report.runs}) > 1
    columns = ["configuration"]
    if several:
        columns.append("provider")
    columns += ["batch", "nodes", "BN", "MB", "session ms", "median ms", "95% CI", "p90 ms"]
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("configuration", "provider") else "right"
        )
    for r in report.runs:
        stats = report.folded if r.model == "folded" else report.original
        row = [r.label]
        if several:
            row.append(r.provider.removesuffix("ExecutionProvider"))
        row += [
            "-" if r.batch_size is None else str(r.batch_size),
            str(stats.nodes),
            str(stats.batchnorms),
            f"{stats.size_bytes / 1e6:.1f}",
            f"{r.session_ms:.1f}",
            f"{r.median_ms:.3f}",
            _interval(*r.ci95_ms),
            f"{r.p90_ms:.3f}",
        ]
        table.add_row(*row)
    return table


def _baseline_table(c: BaselineComparison) -> Table:
    how = "; folded judged relative to the original" if c.relative else ""
    table = _table(f"against {c.path} (now / then; slower only beyond +{c.max_slowdown:.0%}{how})")
    columns = ("model", "configuration", "batch", "then ms", "now ms", "change", "95% CI")
    for column in (*columns, "vs original"):
        table.add_column(
            column, justify="left" if column in ("model", "configuration") else "right"
        )
    table.add_column("verdict")
    style = {"slower": "red", "faster": "green", "same": ""}
    for ch in c.changes:
        label = f"{ch.run} @ {ch.optimization} {ch.provider.removesuffix('ExecutionProvider')}"
        verdict = f"[{style[ch.verdict]}]{ch.verdict}[/]" if style[ch.verdict] else ch.verdict
        table.add_row(
            escape(ch.model),
            escape(label),
            "-" if ch.batch_size is None else str(ch.batch_size),
            f"{ch.baseline_ms:.3f}",
            f"{ch.median_ms:.3f}",
            f"{ch.ratio - 1:+.1%}",
            f"[{ch.ci95[0] - 1:+.1%}, {ch.ci95[1] - 1:+.1%}]",
            _relative(ch),
            verdict,
        )
    for label in c.unmatched:
        table.add_row(escape(label), "not in the baseline", "", "", "", "", "", "", "")
    return table


def _relative(ch: Change) -> str:
    if ch.relative is None or ch.relative_ci95 is None:
        return ""
    lo, hi = ch.relative_ci95
    return f"{ch.relative - 1:+.1%} [{lo - 1:+.1%}, {hi - 1:+.1%}]"
