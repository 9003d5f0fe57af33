"""What verification found: per-output numbers (``OutputComparison``) and the verdict on a pair
of models (``VerifyReport``), with the default tolerances by dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["passed", "failed", "unverified"]


#: Default (rtol, atol) by output element type. An element passes when
#: |folded - original| <= atol * scale + rtol * |original|, with scale = max(1, max |original|):
#: float rounding in a deep network grows with the magnitude of the values it computes, so the
#: absolute part is measured against the output's own range (for outputs within [-1, 1] this is
#: exactly numpy's allclose).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
    "float64": (1e-7, 1e-9),
}


#: Seconds one verification may take.
DEFAULT_TIMEOUT = 600.0

#: Integer, bool and other non-float outputs must be equal.
EXACT = (0.0, 0.0)


def default_tolerance(dtype: str) -> tuple[float, float]:
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class OutputComparison:
    """How far one output of the candidate is from the original's, over all samples.

    ``min_atol`` is the smallest atol that would have passed at this rtol; ``min_rtol`` the
    smallest rtol at this atol (inf when none can: the original is 0 where they differ).
    ``scale`` = max(1, max |original|) multiplies atol. ``error_ratio`` is the worst
    |difference| / (atol*scale + rtol*|original|): above 1 fails.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    rtol: float
    atol: float
    min_atol: float
    min_rtol: float
    error_ratio: float
    scale: float
    mismatched: int
    size: int
    passed: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; non-finite numbers (an impossible min_rtol, NaN errors) become null."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "max_abs": _finite_or_none(self.max_abs),
            "max_rel": _finite_or_none(self.max_rel),
            "mean_abs": _finite_or_none(self.mean_abs),
            "rtol": self.rtol,
            "atol": self.atol,
            "min_atol": _finite_or_none(self.min_atol),
            "min_rtol": _finite_or_none(self.min_rtol),
            "error_ratio": _finite_or_none(self.error_ratio),
            "scale": _finite_or_none(self.scale),
            "mismatched": self.mismatched,
            "size": self.size,
            "passed": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on a pair of models, with per-output numbers and how they were obtained."""

    status: Status
    backend: str | None
    outputs: tuple[OutputComparison, ...]
    samples: int
    seed: int
    input_shapes: dict[str, list[int]]
    reason: str | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    #: The size unknown dims were run at when the original did not run at the default (the
    #: shapes are in ``input_shapes``, the why in ``notes``; not a key of its own in the JSON)
    enlarged: int | None = None
    #: the release of the backend (onnxruntime or onnx) and the execution providers it ran on
    backend_version: str | None = None
    providers: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def worst(self, n: int = 3) -> list[OutputComparison]:
        """The ``n`` outputs furthest over (or closest to) their tolerance."""
        return sorted(self.outputs, key=lambda o: (o.passed, -_sortable(o.error_ratio)))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "providers": list(self.providers),
            "reason": self.reason,
            "samples": self.samples,
            "seed": self.seed,
            "input_shapes": self.input_shapes,
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x
