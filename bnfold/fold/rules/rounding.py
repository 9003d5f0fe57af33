"""Folded tensors rounded once into their dtype, refused (``non_finite``) when that overflows."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.fold.rules.reasons import Reason, Skip
from bnfold.numerics import arith as numerics

F64 = numerics.F64


def rounded(values: F64, elem_type: int, what: str) -> npt.NDArray[Any]:
    """Round a folded tensor once into its dtype; Skip if that overflows or was already bad."""
    return _finite(numerics.round_to(values, elem_type), elem_type, what)


def rounded_scaled(
    values: npt.NDArray[Any], scale: F64, elem_type: int, what: str
) -> numerics.Values:
    """``values * scale`` in float64, rounded once into ``elem_type``; Skip as ``rounded``.

    A weight of ``numerics.LAZY_FROM`` bytes (1 MiB) or more is checked chunk by chunk and
    returned as a ``LazyScaled``, computed again when it is written: memory stays at one chunk.
    """
    if values.nbytes < numerics.LAZY_FROM or values.ndim == 0:
        return _finite(numerics.scale_round(values, scale, elem_type), elem_type, what)
    shape = tuple(np.broadcast_shapes(values.shape, scale.shape))
    lazy = numerics.LazyScaled(values, scale, elem_type, shape)
    bad = lazy.count_non_finite()
    if bad:
        raise Skip(
            Reason.NON_FINITE,
            f"folding would give {bad} non-finite value(s) in the {what} "
            f"({numerics.dtype_name(elem_type)}), e.g. from a near-zero variance",
        )
    return lazy


def _finite(out: npt.NDArray[Any], elem_type: int, what: str) -> npt.NDArray[Any]:
    if not numerics.all_finite(out):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out.astype(np.float64))))
        raise Skip(
            Reason.NON_FINITE,
            f"folding would give {bad} non-finite value(s) in the {what} "
            f"({numerics.dtype_name(elem_type)}), e.g. from a near-zero variance",
        )
    return out
