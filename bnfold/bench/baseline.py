"""A previous run's JSON as a regression gate: each latency and speedup compared with the same
configuration then, beyond the noise of both runs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.bench.defaults import (
    DEFAULT_MAX_SLOWDOWN,
)
from bnfold.bench.report import BenchReport, Latency
from bnfold.bench.stats import ratio_ci, ratio_of_intervals
from bnfold.errors import UsageError


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
