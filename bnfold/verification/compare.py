"""Comparing one output of two models (runs in the verification child): the errors, the smallest
tolerances that would pass, and the worst over several samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bnfold.verification.report import OutputComparison, default_tolerance

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def dtype_name(array: np.ndarray) -> str:
    return str(array.dtype)


def is_float(dtype: np.dtype[Any]) -> bool:
    """True for numpy's floats and complex numbers and ml_dtypes' (bfloat16, float8...), whose
    numpy kind is "V": they get the float tolerances and the output-range scale, not equality."""
    return dtype.kind in "fc" or (dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")))


def compare_arrays(
    name: str, original: np.ndarray, candidate: np.ndarray, rtol: float, atol: float
) -> OutputComparison:
    """Elementwise ``allclose`` (NaNs must match) with the numbers a person needs to judge it."""
    dtype = dtype_name(original)
    shape = tuple(int(d) for d in original.shape)

    def failed(note: str) -> OutputComparison:
        inf = math.inf
        return OutputComparison(
            name, dtype, shape, inf, inf, inf, rtol, atol, inf, inf, inf, 1.0, original.size,
            original.size, False, note,
        )  # fmt: skip

    if candidate.dtype != original.dtype:
        return failed(f"dtype differs: {dtype_name(candidate)} vs {dtype}")
    if candidate.shape != original.shape:
        return failed(f"shape differs: {list(candidate.shape)} vs {list(shape)}")
    if original.dtype.kind in "OSU":
        bad = int(np.count_nonzero(original != candidate))
        return OutputComparison(
            name, dtype, shape, float(bad > 0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(bad > 0),
            1.0, bad, original.size, bad == 0,
        )  # fmt: skip
    ref = original.astype(np.float64)
    got = candidate.astype(np.float64)
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    same = (ref == got) | (nan_ref & nan_got)  # also equal infinities
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - ref))
    diff = np.where(nan_ref ^ nan_got, np.inf, diff)
    mag = np.abs(np.where(nan_ref, 0.0, ref))
    finite = mag[np.isfinite(mag)]
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    if not is_float(original.dtype):
        scale = 1.0  # integers and bools: exact
    allowed = atol * scale + rtol * mag
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
        rel = np.where(diff == 0, 0.0, diff / mag)
        need_rtol = np.where(diff <= atol * scale, 0.0, (diff - atol * scale) / mag)
    size = int(original.size)
    mismatched = int(np.count_nonzero(diff > allowed))
    return OutputComparison(
        name=name,
        dtype=dtype,
        shape=shape,
        max_abs=float(diff.max()) if size else 0.0,
        max_rel=float(rel.max()) if size else 0.0,
        mean_abs=float(diff.mean()) if size else 0.0,
        rtol=rtol,
        atol=atol,
        min_atol=float(np.max(np.maximum(diff - rtol * mag, 0.0))) / scale if size else 0.0,
        min_rtol=float(need_rtol.max()) if size else 0.0,
        error_ratio=float(ratio.max()) if size else 0.0,
        scale=scale,
        mismatched=mismatched,
        size=size,
        passed=mismatched == 0,
    )


def merge(a: OutputComparison, b: OutputComparison) -> OutputComparison:
    """The worst of two samples' comparisons of the same output."""
    return OutputComparison(
        name=a.name,
        dtype=a.dtype,
        shape=a.shape,
        max_abs=max(a.max_abs, b.max_abs),
        max_rel=max(a.max_rel, b.max_rel),
        mean_abs=max(a.mean_abs, b.mean_abs),
        rtol=a.rtol,
        atol=a.atol,
        min_atol=max(a.min_atol, b.min_atol),
        min_rtol=max(a.min_rtol, b.min_rtol),
        error_ratio=max(a.error_ratio, b.error_ratio),
        scale=max(a.scale, b.scale),
        mismatched=a.mismatched + b.mismatched,
        size=a.size + b.size,
        passed=a.passed and b.passed,
        note=a.note or b.note,
    )


def tolerances_for(
    name: str,
    dtype: str,
    rtol: float | None,
    atol: float | None,
    per_output: Mapping[str, Sequence[float | None]] | None,
) -> tuple[float, float]:
    """Per-output override, else the global option, else the dtype default."""
    d_rtol, d_atol = default_tolerance(dtype)
    o_rtol, o_atol = (per_output or {}).get(name, (None, None))
    r = o_rtol if o_rtol is not None else rtol if rtol is not None else d_rtol
    a = o_atol if o_atol is not None else atol if atol is not None else d_atol
    return float(r), float(a)
