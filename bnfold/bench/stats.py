"""Confidence intervals for benchmark latencies: order statistics for a median, a seeded
bootstrap over timed rounds for a ratio of medians.

Each round of ``bnfold bench`` times every configuration once, in rotation, so round ``i`` of two
configurations saw the same spell of machine load. A speedup's interval therefore resamples whole
rounds (the same indices for numerator and denominator) and takes the ratio of medians: load that
slows both alike cancels out instead of widening the interval. numpy only, so the benchmark's
child process can use it to decide when to stop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bootstrap resamples for the reported intervals (fewer while deciding whether to stop).
RESAMPLES = 2000
CONFIDENCE = 0.95


#: resampled rows drawn at once, so that thousands of rounds do not need a huge index array
BLOCK_ELEMENTS = 1 << 20


def _medians(arrays: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Medians of ``resamples`` bootstrap resamples of each array (all of one length, resampled
    with the same indices: paired), drawn in blocks."""
    rng = np.random.default_rng(seed)
    n = arrays[0].size
    rows = max(1, BLOCK_ELEMENTS // n)
    out: list[list[np.ndarray]] = [[] for _ in arrays]
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        for k, x in enumerate(arrays):
            out[k].append(np.median(x[idx], axis=1))
    return [np.concatenate(parts) for parts in out]


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def median_ci(
    samples: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """The median of ``samples`` and a distribution-free interval for it: (median, lo, hi).

    The order statistics n/2 -+ z*sqrt(n)/2 (the binomial interval for the median): exact for
    any distribution, and instant for the thousands of rounds a small model gets.
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    if x.size == 0:
        raise ValueError("no samples")
    n = x.size
    median = float(np.median(x))
    z = _Z.get(confidence, 1.959964)
    half = z * np.sqrt(n) / 2
    lo = int(np.clip(np.floor(n / 2 - half), 0, n - 1))
    hi = int(np.clip(np.ceil(n / 2 + half) - 1, 0, n - 1))
    return median, min(float(x[lo]), median), max(float(x[hi]), median)


_Z = {0.9: 1.644854, 0.95: 1.959964, 0.99: 2.575829}


def ratio_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    *,
    paired: bool = True,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """median(numerator) / median(denominator) and a bootstrap interval: (ratio, lo, hi).

    ``paired``: sample ``i`` of both came from the same round, so rounds are resampled together
    (both must have the same length). Unpaired (e.g. against a baseline run on another day),
    each side is resampled on its own.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("no samples")
    if paired and a.size != b.size:
        raise ValueError("paired samples must have the same length")
    ratio = _safe_ratio(float(np.median(a)), float(np.median(b)))
    if a.size == 1 and b.size == 1:
        return ratio, ratio, ratio
    if paired:
        ma, mb = _medians([a, b], resamples, seed)
    else:
        (ma,), (mb,) = _medians([a], resamples, seed), _medians([b], resamples, seed + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return ratio, ratio, ratio
    lo, hi = _interval(ratios, confidence)
    return ratio, min(lo, ratio), max(hi, ratio)


def ratio_of_intervals(
    numerator: tuple[float, float, float], denominator: tuple[float, float, float]
) -> tuple[float, float, float]:
    """A ratio's interval from two (median, lo, hi) intervals when no samples are at hand.

    The half-widths are combined in log space as if independent, which is what a bootstrap of
    two independent medians gives for roughly symmetric intervals.
    """
    ratio = _safe_ratio(numerator[0], denominator[0])
    if not all(v > 0 for v in (*numerator, *denominator)):
        return ratio, ratio, ratio
    up = np.hypot(np.log(numerator[2] / numerator[0]), np.log(denominator[0] / denominator[1]))
    down = np.hypot(np.log(numerator[0] / numerator[1]), np.log(denominator[2] / denominator[0]))
    return ratio, float(ratio * np.exp(-down)), float(ratio * np.exp(up))


def relative_half_width(interval: tuple[float, float, float]) -> float:
    """Half the interval's width over its centre value: 0.02 means about +-2%."""
    centre, lo, hi = interval
    return (hi - lo) / 2 / centre if centre > 0 else float("inf")


def _safe_ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")
