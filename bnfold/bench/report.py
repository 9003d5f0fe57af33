"""What ``bnfold bench`` measured: per-configuration latencies, speedups with their bootstrap
intervals, and the models' sizes and node counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bnfold.errors import UsageError
from bnfold.fold.report import FoldReport
from bnfold.runtime.levels import ORT_LEVELS

#: what a user may type for a level -> the name in reports
LEVELS = {
    "disable": "disable_all",
    "disable_all": "disable_all",
    "basic": "basic",
    "extended": "extended",
    "all": "all",
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
        return f"{self.model} @ {ORT_LEVELS.get(self.optimization, self.optimization)}"

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

    @property
    def significant(self) -> bool:
        """Whether the 95% interval excludes 1.0: only then did folding measurably change the
        speed (an interval that holds 1 says as much for "slower" as for "faster")."""
        lo, hi = self.ci95
        return lo > 1.0 or hi < 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "ci95": list(self.ci95), "significant": self.significant}

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
