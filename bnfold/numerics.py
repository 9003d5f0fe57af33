"""Fold arithmetic: everything in float64, rounded once into each tensor's own dtype.

Rounding step by step in float32 or float16 (as other tools do) leaves folded weights up to ~2 ULP
off; one correctly rounded conversion from float64 leaves them within 0.5 ULP.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold import proto
from bnfold.proto import TensorProto

F64 = npt.NDArray[np.float64]

#: ONNX element types a BatchNormalization can be folded in, with their display names.
FLOAT_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.BFLOAT16: "bfloat16",
}


def dtype_name(elem_type: int) -> str:
    """A readable name for an ONNX element type (also for a number ONNX does not define)."""
    if elem_type in FLOAT_TYPES:
        return FLOAT_TYPES[elem_type]
    if elem_type not in proto.KNOWN_TYPES:
        return f"unknown element type {elem_type}"
    name: str = TensorProto.DataType.Name(elem_type)
    return name.lower()


def to_float64_array(values: npt.NDArray[Any]) -> F64:
    """Any float array (bfloat16 included) as float64; exact."""
    return np.asarray(values).astype(np.float64)


def _float64_to_bfloat16(values: F64) -> npt.NDArray[Any]:
    """Round float64 to bfloat16 once, correctly (round to nearest, ties to even).

    ml_dtypes converts float64 through float32, rounding twice. Rounding to float32 *to odd*
    first keeps enough information (float32 has 16 more significand bits than bfloat16) for the
    second rounding to be exact.
    """
    import ml_dtypes

    nearest = values.astype(np.float32)
    # Round toward zero: step back one float32 ULP where rounding to nearest went away from zero.
    away = np.abs(nearest.astype(np.float64)) > np.abs(values)
    toward_zero = np.where(away, np.nextafter(nearest, np.float32(0)), nearest).astype(np.float32)
    inexact = (toward_zero.astype(np.float64) != values) & np.isfinite(values)
    bits = toward_zero.view(np.uint32) | inexact.astype(np.uint32)
    result: npt.NDArray[Any] = bits.view(np.float32).astype(ml_dtypes.bfloat16)
    return result


def round_to(values: F64, elem_type: int) -> npt.NDArray[Any]:
    """Round float64 values once into the numpy dtype that stores ONNX ``elem_type``.

    Overflow gives inf silently: callers check ``all_finite`` and skip with a reason.
    """
    with np.errstate(over="ignore"):
        return _round_to(values, elem_type)


def _round_to(values: F64, elem_type: int) -> npt.NDArray[Any]:
    if elem_type == TensorProto.DOUBLE:
        return np.asarray(values, dtype=np.float64)
    if elem_type == TensorProto.FLOAT:
        return np.asarray(values, dtype=np.float64).astype(np.float32)
    if elem_type == TensorProto.FLOAT16:
        # numpy converts double to half directly, with a single correct rounding.
        return np.asarray(values, dtype=np.float64).astype(np.float16)
    if elem_type == TensorProto.BFLOAT16:
        return _float64_to_bfloat16(np.asarray(values, dtype=np.float64))
    raise ValueError(f"cannot round to {dtype_name(elem_type)}")


def all_finite(values: npt.NDArray[Any]) -> bool:
    """True when no value is inf or NaN (checked in the rounded dtype, where overflow shows)."""
    return bool(np.isfinite(values).all())


_DIRECT: dict[int, type[np.floating[Any]]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
}


def scale_round(values: npt.NDArray[Any], scale: F64, elem_type: int) -> npt.NDArray[Any]:
    """``values * scale`` computed in float64 and rounded once into ``elem_type``.

    Same result as ``round_to(scaled(values, scale), elem_type)``, but numpy works through it in
    small buffered blocks, so no float64 copy of a large weight is ever made.
    """
    dtype = _DIRECT.get(elem_type)
    if dtype is None:  # bfloat16: numpy cannot round float64 to it once; take the long way
        return round_to(scaled(values, scale), elem_type)
    out = np.empty(np.broadcast_shapes(values.shape, scale.shape), dtype=dtype)
    # numpy releases the GIL in the multiply: halves of a large weight run on two cores
    halves = 2 if out.size >= PARALLEL_FROM and out.ndim and out.shape[0] > 1 else 1
    if halves > 1 and values.shape[0] == out.shape[0] and (os.cpu_count() or 1) > 1:
        cut = out.shape[0] // 2
        rows = scale.shape[0] if scale.ndim == out.ndim else 1
        parts = [(slice(0, cut), slice(0, cut)), (slice(cut, None), slice(cut, None))]

        def work(part: tuple[slice, slice]) -> None:
            v, o = part
            sv = scale[v] if rows > 1 else scale
            with np.errstate(over="ignore", invalid="ignore"):
                np.multiply(values[v], sv, out=out[o], dtype=np.float64, casting="unsafe")

        worker = _pool().submit(work, parts[1])
        work(parts[0])
        worker.result()
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(values, scale, out=out, dtype=np.float64, casting="unsafe")
    return out


#: Weights of at least this many elements are scaled on two threads.
PARALLEL_FROM = 1 << 18
_POOL: Any = None


def _pool() -> Any:
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnfold-scale")
    return _POOL


def scaled(values: npt.NDArray[Any], scale: F64) -> F64:
    """``values * scale`` computed in float64 (exact widening, one pass, no float64 copy first)."""
    with np.errstate(over="ignore", invalid="ignore"):
        result: F64 = np.multiply(values, scale, dtype=np.float64)
    return result


def bn_scale(scale: F64, var: F64, epsilon: float) -> F64:
    """Per-channel multiplier s = gamma / sqrt(var + eps) of an inference-mode BN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        result: F64 = scale / np.sqrt(var + np.float64(epsilon))
    return result


def folded_bias(s: F64, bias: F64, mean: F64, beta: F64) -> F64:
    """b' = s * (b - mean) + beta: the bias that makes the layer emit BN(layer(x))."""
    with np.errstate(over="ignore", invalid="ignore"):
        result: F64 = s * (bias - mean) + beta
    return result


def store(tensor: TensorProto, values: npt.NDArray[Any], elem_type: int) -> None:
    """Replace the contents of ``tensor`` (name, doc string and metadata kept) with ``values``.

    Written straight into the tensor: one copy into the model, whether the old data was inline,
    in typed fields or in an external file.
    """
    raw = storable(values, elem_type).tobytes()
    proto.reset_data(tensor, tuple(values.shape), elem_type)
    tensor.raw_data = raw


def storable(values: npt.NDArray[Any], elem_type: int) -> npt.NDArray[Any]:
    """``values`` as the contiguous little-endian array ONNX's raw_data would hold."""
    make_tensor("t", values.reshape(-1)[:0], elem_type)  # validates the dtype
    out = np.ascontiguousarray(values)
    if sys.byteorder == "big" and out.dtype.itemsize > 1:
        out = out.byteswap()
    return out


def make_tensor(name: str, values: npt.NDArray[Any], elem_type: int) -> TensorProto:
    """A TensorProto of ``elem_type`` holding ``values`` (already rounded to that type)."""
    tensor = proto.from_array(np.ascontiguousarray(values), name)
    if tensor.data_type != elem_type:
        raise ValueError(
            f"{name}: array is {dtype_name(tensor.data_type)}, expected {dtype_name(elem_type)}"
        )
    return tensor


#: Folded weights of at least this many bytes are not kept in memory: the fold checks them
#: chunk by chunk and the writer computes them again, chunk by chunk, as it writes them.
LAZY_FROM = 1 << 20
#: Bytes of one chunk of a lazily scaled weight.
CHUNK_BYTES = 4 << 20


def storage_itemsize(elem_type: int) -> int:
    """Bytes per element of the float types a fold writes."""
    direct = _DIRECT.get(elem_type)
    return 2 if direct is None else int(np.dtype(direct).itemsize)


@dataclass(frozen=True)
class LazyScaled:
    """``values * scale`` rounded once into ``elem_type``, computed only when asked, in chunks:
    a folded weight that costs memory only while a chunk of it is being written.

    ``values`` is the weight as the rule sees it (possibly a reshaped view, e.g. ConvTranspose's
    groups); ``shape`` is the tensor's. Chunks run along the first axis of the result that is
    longer than 1 with only length-1 axes before it, so they are contiguous and their bytes,
    one after the other, are the tensor's bytes. Each element is computed exactly as
    ``scale_round`` computes it. ``release`` is called after each chunk (drop the mapped pages
    of ``values`` that were read).
    """

    values: npt.NDArray[Any] = field(repr=False)
    scale: F64 = field(repr=False)
    elem_type: int
    shape: tuple[int, ...]
    release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * storage_itemsize(self.elem_type)

    def reshape(self, shape: Sequence[int]) -> LazyScaled:
        return replace(self, shape=tuple(int(d) for d in shape))

    def with_release(self, release: Callable[[], None]) -> LazyScaled:
        return replace(self, release=release)

    def chunks(self) -> Iterator[npt.NDArray[Any]]:
        out_shape = np.broadcast_shapes(self.values.shape, self.scale.shape)
        scale = self.scale.reshape((1,) * (len(out_shape) - self.scale.ndim) + self.scale.shape)
        axis = next((i for i, d in enumerate(out_shape) if d > 1), 0)
        if not out_shape or self.values.shape[axis] != out_shape[axis]:
            yield scale_round(self.values, scale, self.elem_type)  # nothing to split along
            return
        per_row = int(np.prod(out_shape[axis + 1 :])) * storage_itemsize(self.elem_type)
        step = max(1, CHUNK_BYTES // max(per_row, 1))
        lead = (slice(None),) * axis
        for start in range(0, out_shape[axis], step):
            rows = (*lead, slice(start, start + step))
            part_scale = scale[rows] if scale.shape[axis] > 1 else scale
            yield scale_round(self.values[rows], part_scale, self.elem_type)
            if self.release is not None:
                self.release()

    def materialize(self) -> npt.NDArray[Any]:
        """The whole folded weight as an array (for a fold that reads it again)."""
        parts = [c.reshape(-1) for c in self.chunks()]
        return np.concatenate(parts).reshape(self.shape) if parts else np.empty(self.shape)

    def count_non_finite(self) -> int:
        """Non-finite values in the result, chunk by chunk (nothing is kept)."""
        return sum(
            int(np.size(c) - np.count_nonzero(np.isfinite(c.astype(np.float64))))
            for c in self.chunks()
            if not all_finite(c)
        )


Values = npt.NDArray[Any] | LazyScaled


def materialized(values: Values) -> npt.NDArray[Any]:
    return values.materialize() if isinstance(values, LazyScaled) else values
