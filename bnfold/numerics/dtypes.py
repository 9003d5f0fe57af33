"""ONNX element types by number (the ``TensorProto.DataType`` values of the ONNX spec), without
the protobuf messages: what the arithmetic needs to know about a tensor's type."""

from __future__ import annotations

FLOAT = 1
FLOAT16 = 10
DOUBLE = 11
BFLOAT16 = 16

#: ONNX element types a BatchNormalization can be folded in, with their display names.
FLOAT_TYPES: dict[int, str] = {
    FLOAT: "float32",
    FLOAT16: "float16",
    DOUBLE: "float64",
    BFLOAT16: "bfloat16",
}

#: Every element type of ONNX 1.23 (``TensorProto.DataType``), lower-cased.
_NAMES = (
    "undefined",
    "float",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "int32",
    "int64",
    "string",
    "bool",
    "float16",
    "double",
    "uint32",
    "uint64",
    "complex64",
    "complex128",
    "bfloat16",
    "float8e4m3fn",
    "float8e4m3fnuz",
    "float8e5m2",
    "float8e5m2fnuz",
    "uint4",
    "int4",
    "float4e2m1",
    "float8e8m0",
    "uint2",
    "int2",
    "float6e2m3",
    "float6e3m2",
)


def dtype_name(elem_type: int) -> str:
    """A readable name for an ONNX element type (also for a number ONNX does not define)."""
    if elem_type in FLOAT_TYPES:
        return FLOAT_TYPES[elem_type]
    if 0 <= elem_type < len(_NAMES):
        return _NAMES[elem_type]
    return f"unknown element type {elem_type}"  # a damaged file, or a newer ONNX
