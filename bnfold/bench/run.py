"""What folding buys at inference time: ``bnfold.benchmark`` and ``bnfold bench``.

The original model is timed at each requested onnxruntime optimization level (by default
ORT_DISABLE_ALL, the model as written, and ORT_ENABLE_BASIC, where onnxruntime fuses
Conv+BatchNormalization itself when it can), the folded model at ORT_DISABLE_ALL, on each
requested execution provider and batch size. One child process times every configuration once
per round, in rotation, until each speedup's bootstrap interval is within ``target_ci`` or the
``max_seconds`` budget ends (then the report is ``noisy``). ``compare_baseline`` turns a previous
run's JSON into a regression gate.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnfold.bench.defaults import (
    DEFAULT_ITERATIONS,
    DEFAULT_LEVELS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SLOWDOWN,
    DEFAULT_PROVIDERS,
    DEFAULT_TARGET_CI,
    DEFAULT_WARMUP,
)
from bnfold.bench.stats import ratio_ci, ratio_of_intervals
from bnfold.errors import InputError, UsageError
from bnfold.fold.report import FoldReport

#: what a user may type for a level -> the name in reports
LEVELS = {
    "disable": "disable_all",
    "disable_all": "disable_all",
    "basic": "basic",
    "extended": "extended",
    "all": "all",
}
ORT_NAMES = {
    "disable_all": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def level_name(text: str) -> str:
    """The report name of an optimization level given as disable|basic|extended|all."""
    name = LEVELS.get(text.strip().lower())
    if name is None:
        raise UsageError(
            f"--level '{text}': not an onnxruntime optimization level",
            hint="use disable, basic, extended or all",
        )
    return name


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
    """One configuration (model, provider, level, batch size): its session creation time and
    the run latencies of every round, summarised with a 95% interval for the median."""

    model: str  # "original" or "folded"
    provider: str
    optimization: str  # "disable_all", "basic", "extended" or "all"
    batch_size: int | None
    threads: int | None
    session_ms: float
    median_ms: float
    p90_ms: float
    ci95_ms: tuple[float, float]
    min_ms: float
    mean_ms: float
    iterations: int
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        return f"{self.model} @ {ORT_NAMES.get(self.optimization, self.optimization)}"

    @property
    def key(self) -> tuple[str, str, int | None, int | None, str]:
        """What a baseline's run must share to be compared with this one (besides the model)."""
        return (self.provider, self.optimization, self.batch_size, self.threads, self.model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "optimization": self.optimization,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "session_ms": self.session_ms,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "ci95_ms": list(self.ci95_ms),
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "iterations": self.iterations,
            "input_shapes": self.input_shapes,
            "samples_ms": list(self.samples_ms),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Latency:
        return cls(
            **{
                **d,
                "ci95_ms": tuple(d["ci95_ms"]),
                "samples_ms": tuple(d.get("samples_ms", ())),
            }
        )


@dataclass(frozen=True)
class Speedup:
    """A ratio of median latencies (original over folded: > 1 means folding made it faster),
    with its bootstrap interval over the paired rounds."""

    median: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "ci95": list(self.ci95)}

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]"


@dataclass(frozen=True)
class SpeedupGroup:
    """The folded model's speedups on one provider at one batch size: "vs_original" (the
    original at ORT_DISABLE_ALL) and "vs_ort_<level>" for each other level timed."""

    provider: str
    batch_size: int | None
    threads: int | None
    speedups: dict[str, Speedup]

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "batch_size": self.batch_size,
            "threads": self.threads,
            **{k: v.to_dict() for k, v in self.speedups.items()},
        }


@dataclass(frozen=True)
class BenchReport:
    """Latency of the original and the folded model, with the speedups folding gives."""

    model: str
    original: ModelStats
    folded: ModelStats
    runs: tuple[Latency, ...]
    speedups: tuple[SpeedupGroup, ...]
    noisy: bool  # the budget ended before every speedup's interval was within target_ci
    rounds: int
    seconds: float
    iterations: int  # minimum rounds asked for
    warmup: int
    threads: int | None
    target_ci: float
    max_seconds: float
    input_shapes: dict[str, list[int]]
    skipped_batch_sizes: tuple[dict[str, Any], ...] = ()
    fold: FoldReport | None = None  # when bnfold folded the model for this benchmark
    notes: tuple[str, ...] = field(default=())

    def run(
        self,
        model: str,
        optimization: str,
        provider: str | None = None,
        batch_size: int | None = None,
    ) -> Latency:
        """The first run that matches (any provider / batch size when not given)."""
        return next(
            r
            for r in self.runs
            if r.model == model
            and r.optimization == optimization
            and provider in (None, r.provider)
            and batch_size in (None, r.batch_size)
        )

    @property
    def folded_run(self) -> Latency:
        return next(r for r in self.runs if r.model == "folded")

    @property
    def speedup(self) -> dict[str, Speedup]:
        """The speedups on the first provider at the first batch size."""
        return self.speedups[0].speedups if self.speedups else {}

    @property
    def batch_sizes(self) -> list[int | None]:
        return list(dict.fromkeys(r.batch_size for r in self.runs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "original": self.original.to_dict(),
            "folded": self.folded.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "speedup": {k: v.to_dict() for k, v in self.speedup.items()},
            "speedups": [g.to_dict() for g in self.speedups],
            "noisy": self.noisy,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "iterations": self.iterations,
            "warmup": self.warmup,
            "threads": self.threads,
            "target_ci": self.target_ci,
            "max_seconds": self.max_seconds,
            "input_shapes": self.input_shapes,
            "skipped_batch_sizes": list(self.skipped_batch_sizes),
            "fold": self.fold.to_dict() if self.fold else None,
            "notes": list(self.notes),
        }


def _stats(path: Path, model: Any, files: set[Path]) -> ModelStats:
    """Size on disk (the model file and the external data files its bytes are in), nodes, BNs."""
    from bnfold.fold import count_nodes
    from bnfold.model.graph import ModelIndex, is_op

    index = ModelIndex(model)
    bns = sum(1 for sc in index.scopes for n in sc.nodes if is_op(n, "BatchNormalization"))
    size = sum(f.stat().st_size for f in {path, *files} if f.is_file())
    return ModelStats(str(path), size, count_nodes(model), bns)


def collect_models(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Model files, with folders expanded into the ``*.onnx`` under them (bnfold's own
    ``*.folded.onnx`` outputs skipped, as everywhere)."""
    from bnfold.batch import collect_tasks

    return [
        t.input for t in collect_tasks([Path(p) for p in paths], None, in_place=False, write=False)
    ]


def _check_options(
    iterations: int,
    warmup: int,
    threads: int | None,
    providers: Sequence[str],
    levels: Sequence[str],
    batch_sizes: Sequence[int],
    max_seconds: float,
    target_ci: float,
) -> None:
    if iterations < 1 or warmup < 0:
        raise UsageError("--iterations must be at least 1 and --warmup at least 0")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if not providers or not levels:
        raise UsageError("--provider and --level need at least one value each")
    bad = [n for n in batch_sizes if n < 1]
    if bad:
        raise UsageError(f"--batch-size {bad[0]}: must be at least 1")
    if not max_seconds > 0 or not 0 < target_ci < 1:
        raise UsageError(
            "--max-seconds must be positive and --target-ci between 0 and 1",
            hint="e.g. --max-seconds 10 --target-ci 0.02 (+-2%)",
        )


def benchmark(
    model: str | os.PathLike[str],
    folded: str | os.PathLike[str] | None = None,
    *,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    levels: Sequence[str] = DEFAULT_LEVELS,
    folded_level: str = "disable_all",
    batch_sizes: Sequence[int] = (),
    iterations: int = DEFAULT_ITERATIONS,
    warmup: int = DEFAULT_WARMUP,
    threads: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    target_ci: float = DEFAULT_TARGET_CI,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    timeout: float | None = 1800.0,
) -> BenchReport:
    """Time ``model`` and its folded form (``folded``, or folded here in memory) in onnxruntime.

    ``iterations`` is the minimum number of rounds; timing goes on until every speedup's 95%
    interval is within +-``target_ci`` (relative) or ``max_seconds`` of timing have passed.
    Raises UsageError for options that do not fit (an execution provider this onnxruntime does
    not have, a level that is none), InputError when a model cannot be read or run.
    """
    from bnfold.fold import FoldEngine
    from bnfold.model.reading import open_model_file
    from bnfold.model.writer import write_model
    from bnfold.runtime.child import run_child

    levels = list(dict.fromkeys(level_name(v) for v in levels))
    folded_level = level_name(folded_level)
    providers = list(dict.fromkeys(providers))
    _check_options(
        iterations, warmup, threads, providers, levels, batch_sizes, max_seconds, target_ci
    )
    src = Path(model)
    opened = open_model_file(src)
    original = opened.model
    original_stats = _stats(src, original, opened.files())
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        work = Path(tmp)
        fold_report = None
        if folded is None:
            engine = FoldEngine(original, base_dir=src.parent, store=opened.store)
            fold_report = engine.run()
            folded_path = work / "folded.onnx"
            write_model(
                original,
                folded_path,
                external=None,
                data_name="folded.onnx.data",
                source_dir=src.parent,
                store=opened.store,
            )
            written = {folded_path.with_name("folded.onnx.data")}
            folded_stats = replace(_stats(folded_path, original, written), path=None)
        else:
            folded_path = Path(folded)
            folded_opened = open_model_file(folded_path)
            folded_stats = _stats(folded_path, folded_opened.model, folded_opened.files())
        del original, opened
        request = {
            "original": str(src),
            "folded": str(folded_path),
            "providers": providers,
            "levels": levels,
            "folded_level": folded_level,
            "batch_sizes": list(batch_sizes),
            "min_rounds": iterations,
            "max_seconds": max_seconds,
            "target_ci": target_ci,
            "warmup": warmup,
            "threads": threads,
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "seed": seed,
        }
        limit = None if timeout is None else timeout + max_seconds
        outcome = run_child("bnfold.bench.worker", request, work, limit, tag="bench")
    status = outcome["status"]
    if status == "user_error":
        error = UsageError if outcome.get("type") == "UsageError" else InputError
        raise error(outcome["message"], hint=outcome.get("hint"))
    if status != "ok":
        raise InputError(
            f"{src}: onnxruntime could not run the benchmark ({outcome['message']})",
            hint="check that onnxruntime can load the model (bnfold verify runs it too)",
        )
    groups = tuple(
        SpeedupGroup(
            g["provider"],
            g["batch_size"],
            g["threads"],
            {
                k: Speedup(v["median"], tuple(v["ci95"]))
                for k, v in g.items()
                if k.startswith("vs_")
            },
        )
        for g in outcome["speedups"]
    )
    return BenchReport(
        model=str(src),
        original=original_stats,
        folded=folded_stats,
        runs=tuple(Latency.from_dict(r) for r in outcome["runs"]),
        speedups=groups,
        noisy=outcome["noisy"],
        rounds=outcome["rounds"],
        seconds=outcome["seconds"],
        iterations=iterations,
        warmup=warmup,
        threads=threads,
        target_ci=target_ci,
        max_seconds=max_seconds,
        input_shapes=outcome["input_shapes"],
        skipped_batch_sizes=tuple(outcome["skipped_batch_sizes"]),
        fold=fold_report,
        notes=tuple(outcome.get("notes", [])),
    )


# -- baseline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One configuration against the same configuration in a baseline: latency now over then
    (> 1 is slower) with its interval, and the verdict against the allowed slowdown."""

    model: str  # the model file's name
    run: str  # "original" or "folded"
    provider: str
    optimization: str
    batch_size: int | None
    threads: int | None
    baseline_ms: float
    median_ms: float
    ratio: float
    ci95: tuple[float, float]
    verdict: str  # "slower", "faster" or "same" (within the noise)
    # folded runs: the change relative to the original's (then/now speedup vs_original), which
    # cancels a machine that is slower or faster as a whole; None when either run lacks it
    relative: float | None = None
    relative_ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "run": self.run,
            "provider": self.provider,
            "optimization": self.optimization,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "baseline_ms": self.baseline_ms,
            "median_ms": self.median_ms,
            "ratio": self.ratio,
            "ci95": list(self.ci95),
            "verdict": self.verdict,
            "relative": self.relative,
            "relative_ci95": list(self.relative_ci95) if self.relative_ci95 else None,
        }


@dataclass(frozen=True)
class BaselineComparison:
    """Every configuration found in both runs; ``regressed`` when a folded model got slower."""

    path: str
    max_slowdown: float
    changes: tuple[Change, ...]
    unmatched: tuple[str, ...]  # configurations of this run the baseline does not have
    relative: bool = False  # folded verdicts judged on the change relative to the original's

    @property
    def regressed(self) -> bool:
        return any(c.run == "folded" and c.verdict == "slower" for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "max_slowdown": self.max_slowdown,
            "relative": self.relative,
            "regressed": self.regressed,
            "changes": [c.to_dict() for c in self.changes],
            "unmatched": list(self.unmatched),
        }


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A previous ``bnfold bench --json`` document (UsageError when it is none)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--baseline {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"--baseline {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benches"), list):
        raise UsageError(
            f'--baseline {path}: not a bnfold bench document (no "benches" list)',
            hint="write one with: bnfold bench MODEL... --json > baseline.json",
        )
    return doc


def _baseline_runs(doc: Mapping[str, Any]) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    found: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for bench in doc["benches"]:
        name = Path(str(bench.get("model", ""))).name
        for r in bench.get("runs") or ():
            try:
                key = (
                    name,
                    r["provider"],
                    r["optimization"],
                    r.get("batch_size"),
                    r.get("threads"),
                    r["model"],
                )
            except (KeyError, TypeError):
                continue  # a run of an older format: nothing to match it by
            found.setdefault(key, r)
    return found


def _change_interval(now: Latency, then: Mapping[str, Any]) -> tuple[float, float, float]:
    base = float(then["median_ms"])
    samples = then.get("samples_ms") or ()
    if now.samples_ms and samples:
        return ratio_ci(now.samples_ms, samples, paired=False)
    lo, hi = then.get("ci95_ms") or (base, base)
    return ratio_of_intervals((now.median_ms, *now.ci95_ms), (base, float(lo), float(hi)))


def _baseline_speedups(doc: Mapping[str, Any]) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    found: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for bench in doc["benches"]:
        name = Path(str(bench.get("model", ""))).name
        for g in bench.get("speedups") or ():
            s = g.get("vs_original") if isinstance(g, Mapping) else None
            if isinstance(s, Mapping) and "median" in s and "ci95" in s:
                found.setdefault(
                    (name, g.get("provider"), g.get("batch_size"), g.get("threads")), s
                )
    return found


def _verdict(interval: tuple[float, float, float], max_slowdown: float) -> str:
    _, lo, hi = interval
    if lo > 1 + max_slowdown:
        return "slower"
    if hi < 1 - max_slowdown:
        return "faster"
    return "same"


def compare_baseline(
    reports: Sequence[BenchReport],
    baseline: Mapping[str, Any],
    *,
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    relative: bool = False,
    path: str = "",
) -> BaselineComparison:
    """Match every run to the baseline's by (model file name, provider, level, batch size,
    threads, original/folded) and judge the change now/then: "slower" when its whole 95%
    interval is above 1 + ``max_slowdown``, "faster" when entirely below 1 - ``max_slowdown``.

    The intervals hold the noise within each run, not a machine that is busier today than when
    the baseline was taken; ``relative`` judges a folded run by its change over the original
    model's in the same configuration (then/now of the "vs_original" speedup) instead, which
    cancels such drift.
    """
    then = _baseline_runs(baseline)
    then_speedups = _baseline_speedups(baseline)
    changes, unmatched = [], []
    for report in reports:
        name = Path(report.model).name
        now_speedups = {(g.provider, g.batch_size): g.speedups for g in report.speedups}
        for r in report.runs:
            old = then.get((name, *r.key[:4], r.model))
            label = f"{name}: {r.label} {r.provider} batch {r.batch_size}"
            if old is None or not float(old.get("median_ms") or 0) > 0:
                unmatched.append(label)
                continue
            interval = _change_interval(r, old)
            verdict = _verdict(interval, max_slowdown)
            rel = None
            if r.model == "folded":
                was = then_speedups.get((name, r.provider, r.batch_size, r.threads))
                now = now_speedups.get((r.provider, r.batch_size), {}).get("vs_original")
                if was is not None and now is not None:
                    lo, hi = (float(v) for v in was["ci95"])
                    rel = ratio_of_intervals(
                        (float(was["median"]), lo, hi), (now.median, *now.ci95)
                    )
                    if relative:
                        verdict = _verdict(rel, max_slowdown)
            changes.append(
                Change(
                    name,
                    r.model,
                    r.provider,
                    r.optimization,
                    r.batch_size,
                    r.threads,
                    float(old["median_ms"]),
                    r.median_ms,
                    interval[0],
                    (interval[1], interval[2]),
                    verdict,
                    rel[0] if rel else None,
                    (rel[1], rel[2]) if rel else None,
                )
            )
    return BaselineComparison(path, max_slowdown, tuple(changes), tuple(unmatched), relative)


# -- plot -------------------------------------------------------------------------------------


NBSP = "\u00a0"


def _short(name: str, width: int) -> str:
    """A long file name without its middle."""
    if len(name) <= width:
        return name
    keep = width - 3
    return name[: keep - keep // 2] + "..." + name[-(keep // 2) :]


def _fit(text: str, width: int) -> str:
    """A title that fits its panel: wrapped into lines of ``width`` characters."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def plot(reports: BenchReport | Sequence[BenchReport], path: str | os.PathLike[str]) -> None:
    """Draw each model's latency distributions (a box and violin per configuration, median
    labelled) and, when several batch sizes ran, median latency per item against batch size.
    Needs matplotlib."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    items = [reports] if isinstance(reports, BenchReport) else list(reports)
    if not items:
        raise UsageError("--plot: nothing was benchmarked")
    with_batches = any(len(r.batch_sizes) > 1 for r in items)
    cols = 2 if with_batches else 1
    first = [[x for x in r.runs if x.batch_size == r.batch_sizes[0]] for r in items]
    heights = [1.2 + 0.45 * len(runs) for runs in first]
    fig, axes = plt.subplots(
        len(items),
        cols,
        figsize=(6.5 * cols, sum(heights) + 0.4),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    colors = {"original": "#9e9e9e", "folded": "#43a047"}
    for row, (report, runs) in enumerate(zip(items, first, strict=True)):
        ax = axes[row][0]
        data = [np.asarray(r.samples_ms or (r.median_ms,)) for r in runs]
        labels = [
            r.label
            + (
                f"\n{r.provider.removesuffix('ExecutionProvider')}"
                if len({x.provider for x in runs}) > 1
                else ""
            )
            for r in runs
        ]
        # the axis ends past the largest p95: one stall must not squeeze every distribution
        # into a line; what lies beyond is drawn at the edge and its maximum said in the label
        p95 = [float(np.percentile(d, 95)) for d in data]
        low = min(float(np.percentile(d, 1)) for d in data)
        span = max(p95) - low or max(p95) or 1.0
        top = max(p95) + 0.35 * span
        clipped = [np.clip(d, None, top) for d in data]
        pos = np.arange(1, len(runs) + 1)
        parts = ax.violinplot(clipped, pos, showextrema=False, widths=0.8, **_horizontal())
        for body, r in zip(parts["bodies"], runs, strict=True):
            body.set_facecolor(colors.get(r.model, "#64b5f6"))
            body.set_alpha(0.35)
        ax.boxplot(
            clipped,
            positions=pos,
            widths=0.3,
            **_horizontal(),
            whis=(5, 95),
            showfliers=False,
            medianprops={"color": "black"},
        )
        ax.set_yticks(pos, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(max(0.0, low - 0.05 * span), top)
        for y, r, right in zip(pos, runs, p95, strict=True):
            ax.annotate(
                f"median {r.median_ms:.3g} ms",
                (right, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        longest = max(float(d.max()) for d in data)
        if longest > top:
            ax.text(
                0.995,
                0.02,
                f"slowest run {longest:.3g} ms (cut)",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="#757575",
            )
        ax.set_xlabel("latency per run (ms): box 25-75%, whiskers 5-95%", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        speed = report.speedup
        # no-break spaces: a title wraps between speedups, never inside one
        parts_text = [
            f"{'vs original' if k == 'vs_original' else 'vs ORT ' + k[7:]} {v}".replace(" ", NBSP)
            for k, v in speed.items()
        ]
        batch = f", batch {runs[0].batch_size}" if runs[0].batch_size is not None else ""
        name = _short(Path(report.model).name, 48)
        title = f"{name}{batch}: folded speedup " + ", ".join(parts_text)
        if report.noisy:
            title += " (noisy)"
        ax.set_title(_fit(title, 60), fontsize=9, loc="left")
        if with_batches:
            _batch_panel(axes[row][1], report)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes and violins: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _batch_panel(ax: Any, report: BenchReport) -> None:
    """Median latency per item (ms / batch size) against batch size, with 95% intervals."""
    sizes = [b for b in report.batch_sizes if b is not None]
    if len(sizes) < 2:
        ax.set_axis_off()
        return
    series: dict[str, list[Latency]] = {}
    for r in report.runs:
        if r.batch_size is not None:
            name = r.label + (
                f" {r.provider.removesuffix('ExecutionProvider')}"
                if len({x.provider for x in report.runs}) > 1
                else ""
            )
            series.setdefault(name, []).append(r)
    for name, runs in series.items():
        xs = [r.batch_size or 1 for r in runs]
        ys = [r.median_ms / (r.batch_size or 1) for r in runs]
        err = [
            [max(0.0, r.median_ms - r.ci95_ms[0]) / (r.batch_size or 1) for r in runs],
            [max(0.0, r.ci95_ms[1] - r.median_ms) / (r.batch_size or 1) for r in runs],
        ]
        style = "-" if runs[0].model == "folded" else "--"
        ax.errorbar(xs, ys, yerr=err, fmt=style + "o", markersize=3, capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size", fontsize=8)
    ax.set_ylabel("median ms per item", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    name = _short(Path(report.model).name, 48)
    ax.set_title(_fit(f"{name}: latency per item", 60), fontsize=9, loc="left")


def check_plot_available() -> None:
    """Fail before a long benchmark if ``--plot`` cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'bnfold[plot]'",
        ) from None
