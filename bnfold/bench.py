"""What folding buys at inference time: ``bnfold.benchmark`` and ``bnfold bench``.

The original model is timed at ORT_DISABLE_ALL (the model as written) and at ORT_ENABLE_BASIC
(where onnxruntime fuses Conv+BatchNormalization itself when it can), the folded model at
ORT_DISABLE_ALL. Each gets its session-creation time and, after warm-up runs, the median, p90,
minimum and mean latency of one run, timed in rotation in one child process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnfold._defaults import DEFAULT_ITERATIONS, DEFAULT_WARMUP
from bnfold.errors import InputError, UsageError
from bnfold.report import FoldReport


@dataclass(frozen=True)
class ModelStats:
    """A model file as benchmarked: where it is, its size, nodes and BatchNormalization count."""

    path: str | None  # None: folded in memory, not written
    size_bytes: int
    nodes: int
    batchnorms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "nodes": self.nodes,
            "batchnorms": self.batchnorms,
        }


@dataclass(frozen=True)
class Latency:
    """One model at one onnxruntime optimization level: session creation and run latency."""

    model: str  # "original" or "folded"
    optimization: str  # "disable_all" or "basic"
    session_seconds: float
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    iterations: int

    @property
    def label(self) -> str:
        level = "ORT_ENABLE_BASIC" if self.optimization == "basic" else "ORT_DISABLE_ALL"
        return f"{self.model} @ {level}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimization": self.optimization,
            "session_seconds": self.session_seconds,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "iterations": self.iterations,
        }


@dataclass(frozen=True)
class BenchReport:
    """Latency of the original and the folded model, with the speedups folding gives."""

    original: ModelStats
    folded: ModelStats
    runs: tuple[Latency, ...]
    iterations: int
    warmup: int
    threads: int | None
    input_shapes: dict[str, list[int]]
    fold: FoldReport | None = None  # when bnfold folded the model for this benchmark
    notes: tuple[str, ...] = field(default=())

    def run(self, model: str, optimization: str) -> Latency:
        return next(r for r in self.runs if r.model == model and r.optimization == optimization)

    @property
    def folded_run(self) -> Latency:
        return self.run("folded", "disable_all")

    @property
    def speedup(self) -> float:
        """Median latency of the original over the folded model, both at ORT_DISABLE_ALL."""
        return _ratio(self.run("original", "disable_all"), self.folded_run)

    @property
    def speedup_vs_ort_basic(self) -> float:
        """Original at ORT_ENABLE_BASIC over folded at ORT_DISABLE_ALL: >= 1 means folding
        offline is at least as good as onnxruntime's own fusion at load time."""
        return _ratio(self.run("original", "basic"), self.folded_run)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original.to_dict(),
            "folded": self.folded.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "speedup": self.speedup,
            "speedup_vs_ort_basic": self.speedup_vs_ort_basic,
            "iterations": self.iterations,
            "warmup": self.warmup,
            "threads": self.threads,
            "input_shapes": self.input_shapes,
            "fold": self.fold.to_dict() if self.fold else None,
            "notes": list(self.notes),
        }


def _ratio(a: Latency, b: Latency) -> float:
    return a.median_ms / b.median_ms if b.median_ms > 0 else float("nan")


def _stats(path: Path, model: Any) -> ModelStats:
    """Size on disk (the model file and the external data files it names), nodes, BNs."""
    from bnfold.engine import count_nodes
    from bnfold.graph import ModelIndex, is_op
    from bnfold.modelio import external_locations

    index = ModelIndex(model)
    bns = sum(1 for sc in index.scopes for n in sc.nodes if is_op(n, "BatchNormalization"))
    size = path.stat().st_size
    for location in external_locations(model):
        data = path.parent / location
        size += data.stat().st_size if data.is_file() else 0
    return ModelStats(str(path), size, count_nodes(model), bns)


def benchmark(
    model: str | os.PathLike[str],
    folded: str | os.PathLike[str] | None = None,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    warmup: int = DEFAULT_WARMUP,
    threads: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    timeout: float | None = 1800.0,
) -> BenchReport:
    """Time ``model`` and its folded form (``folded``, or folded here in memory) in onnxruntime.

    Raises UsageError for options that do not fit, InputError when a model cannot be read or
    onnxruntime cannot run it.
    """
    from bnfold.engine import FoldEngine
    from bnfold.modelio import read_model
    from bnfold.verification import run_child
    from bnfold.writer import write_model

    if iterations < 1 or warmup < 0:
        raise UsageError("--iterations must be at least 1 and --warmup at least 0")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    src = Path(model)
    original, _ = read_model(src, load_external_data=False, lazy=True)
    original_stats = _stats(src, original)
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        work = Path(tmp)
        fold_report = None
        if folded is None:
            engine = FoldEngine(original, base_dir=src.parent, hold=True)
            fold_report = engine.run()
            folded_path = work / "folded.onnx"
            write_model(
                original,
                folded_path,
                external=None,
                data_name="folded.onnx.data",
                source_dir=src.parent,
                held=engine.held,
            )
            folded_stats = replace(_stats(folded_path, original), path=None)
        else:
            folded_path = Path(folded)
            folded_model, _ = read_model(folded_path, load_external_data=False, lazy=True)
            folded_stats = _stats(folded_path, folded_model)
        del original
        request = {
            "original": str(src),
            "folded": str(folded_path),
            "iterations": iterations,
            "warmup": warmup,
            "threads": threads,
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "seed": seed,
        }
        outcome = run_child("bnfold._benchworker", request, work, timeout, tag="bench")
    status = outcome["status"]
    if status == "user_error":
        error = UsageError if outcome.get("type") == "UsageError" else InputError
        raise error(outcome["message"], hint=outcome.get("hint"))
    if status != "ok":
        raise InputError(
            f"{src}: onnxruntime could not run the benchmark ({outcome['message']})",
            hint="check that onnxruntime can load the model (bnfold verify runs it too)",
        )
    return BenchReport(
        original=original_stats,
        folded=folded_stats,
        runs=tuple(Latency(**r) for r in outcome["runs"]),
        iterations=iterations,
        warmup=warmup,
        threads=threads,
        input_shapes=outcome["input_shapes"],
        fold=fold_report,
        notes=tuple(outcome.get("notes", [])),
    )


def plot(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Draw the median latencies (with p90 whiskers) as a bar chart; needs matplotlib."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in report.runs]
    medians = [r.median_ms for r in report.runs]
    spread = [r.p90_ms - r.median_ms for r in report.runs]
    fig, ax = plt.subplots(figsize=(8, 3))
    colors = ["#9e9e9e", "#64b5f6", "#43a047"][: len(labels)]
    ax.barh(labels, medians, xerr=[[0] * len(spread), spread], color=colors, capsize=4)
    ax.invert_yaxis()
    ax.set_xlabel("latency per run (ms): median, whisker to p90")
    name = Path(report.original.path or "model").name
    ax.set_title(
        f"{name}: folded {report.speedup:.2f}x the original's speed, "
        f"{report.speedup_vs_ort_basic:.2f}x onnxruntime basic",
        fontsize=10,
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def check_plot_available() -> None:
    """Fail before a long benchmark if ``--plot`` cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'bnfold[plot]'",
        ) from None
