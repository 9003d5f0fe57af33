"""Weight-only quantized layers for tests: DequantizeLinear(integer weight, scale, zero point)
feeding a Conv/ConvTranspose/Gemm/MatMul, built with onnx.helper and numpy (and ml_dtypes for
4-bit types, which onnx depends on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.builders import tensor

#: numpy dtype and value range of each integer weight type.
INTEGER = {
    "int8": (np.int8, -128, 127),
    "uint8": (np.uint8, 0, 255),
    "int16": (np.int16, -32768, 32767),
    "uint16": (np.uint16, 0, 65535),
    "int32": (np.int32, -(2**20), 2**20),
    "int4": (ml_dtypes.int4, -8, 7),
    "uint4": (ml_dtypes.uint4, 0, 15),
}


@dataclass
class QuantizedWeight:
    """The nodes and initializers of DequantizeLinear(q, scale[, zp]) -> ``name``."""

    name: str
    nodes: list[onnx.NodeProto]
    inits: list[TensorProto]
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)


def quantized_weight(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    qtype: str = "int8",
    axis: int | None = 0,
    block: int = 0,
    zero_point: bool = True,
    scale_dtype: Any = np.float32,
    prefix: str = "w",
) -> QuantizedWeight:
    """An integer weight of ``shape`` with its DequantizeLinear: per tensor (``axis`` None),
    per axis, or in blocks of ``block`` along ``axis``. The integers use the type's full range
    (int8's -128 included) and zero points are non-zero, so a wrong fold shows."""
    dtype, lo, hi = INTEGER[qtype]
    q = rng.integers(lo, hi + 1, shape)
    q.flat[0] = lo  # the value with no negation in a signed type
    q = q.astype(dtype)
    if axis is None:
        sshape: tuple[int, ...] = ()
    elif block:
        sshape = tuple(-(-d // block) if i == axis else d for i, d in enumerate(shape))
    else:
        sshape = (shape[axis],)
    scale = rng.uniform(0.002, 0.02, sshape).astype(scale_dtype)
    zp = rng.integers(lo, hi + 1, sshape).astype(dtype) if zero_point else None
    if zp is not None and lo == 0:
        zp = np.asarray(np.full(sshape, (lo + hi + 1) // 2) + rng.integers(-3, 4, sshape)).astype(
            dtype
        )
    attrs: dict[str, Any] = {}
    if axis is not None:
        attrs["axis"] = axis
    if block:
        attrs["block_size"] = block
    names = [f"{prefix}_q", f"{prefix}_scale"] + ([f"{prefix}_zp"] if zp is not None else [])
    inits = [tensor(names[0], q), tensor(names[1], scale)]
    if zp is not None:
        inits.append(tensor(names[2], zp))
    node = helper.make_node("DequantizeLinear", names, [prefix], name=f"{prefix}_dq", **attrs)
    return QuantizedWeight(prefix, [node], inits, q, scale, zp, attrs)


def initializer_bytes(model: onnx.ModelProto, name: str) -> bytes:
    """The raw bytes of initializer ``name`` (what must not change)."""
    (t,) = [t for t in model.graph.initializer if t.name == name]
    return bytes(t.raw_data)


def count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)


FLOAT = TensorProto.FLOAT
