"""ONNX's protobuf messages and the few helpers bnfold needs, without importing the onnx package.

``import onnx`` imports ml_dtypes (for its dtype tables), whose import alone costs about a second
on every run of bnfold, more than folding a ResNet-50. The messages themselves only need
protobuf: onnx's generated ``onnx_ml_pb2`` module is loaded on its own, under its own name, so
that a later ``import onnx`` (shape inference, the reference evaluator, bfloat16 arrays) finds it
and uses the very same classes. The array helpers cover the plain numeric types directly and
hand everything else to ``onnx.numpy_helper``/``onnx.helper``, imported then.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.numerics.dtypes import dtype_name


def _onnx_folder() -> str | None:
    """Where the onnx package lies, found without running its ``__init__``."""
    spec = importlib.util.find_spec("onnx")
    locations = spec.submodule_search_locations if spec is not None else None
    return locations[0] if locations else None


def _load_submodule(name: str, path: str) -> ModuleType:
    """Execute the file ``path`` as the module ``name`` (a submodule of onnx), registered under
    that name, so that a later ``import onnx`` finds it and uses the very same module."""
    file_spec = importlib.util.spec_from_file_location(name, path)
    if file_spec is None or file_spec.loader is None:  # pragma: no cover
        raise ImportError(f"onnx's {name} cannot be loaded from {path}")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    try:
        file_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_messages() -> ModuleType:
    name = "onnx.onnx_ml_pb2"
    if name in sys.modules:
        return sys.modules[name]
    if "onnx" in sys.modules:
        import onnx.onnx_ml_pb2 as loaded

        return loaded
    folder = _onnx_folder()
    if folder is None:  # pragma: no cover - onnx is a dependency
        raise ImportError("bnfold needs the onnx package")
    return _load_submodule(name, f"{folder}/onnx_ml_pb2.py")


_pb = _load_messages()

ModelProto: Any = _pb.ModelProto
GraphProto: Any = _pb.GraphProto
NodeProto: Any = _pb.NodeProto
TensorProto: Any = _pb.TensorProto
AttributeProto: Any = _pb.AttributeProto
ValueInfoProto: Any = _pb.ValueInfoProto
TypeProto: Any = _pb.TypeProto
FunctionProto: Any = _pb.FunctionProto


def full_onnx() -> Any:
    """The onnx package itself, for what only it has (shape inference, the checker, ...)."""
    import onnx

    return onnx


def _load_extension() -> Any:
    """onnx's C++ extension (shape inference lives there), loaded like the messages: on its own,
    under its own name, where a later ``import onnx`` finds it. Loading it takes milliseconds;
    ``import onnx`` about a second. None when it is not where onnx keeps it."""
    name = "onnx.onnx_cpp2py_export"
    if name in sys.modules:
        return sys.modules[name]
    if "onnx" in sys.modules:
        return full_onnx().onnx_cpp2py_export
    folder = _onnx_folder()
    paths = [
        f"{folder}/onnx_cpp2py_export{suffix}"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if folder and os.path.isfile(f"{folder}/onnx_cpp2py_export{suffix}")
    ]
    if not paths:  # pragma: no cover - a different layout
        return None
    return _load_submodule(name, paths[0])


def infer_shapes(model: ModelProto) -> ModelProto:
    """onnx shape inference (not strict: a node it cannot infer is left as it is), without
    importing the onnx package when its extension can be loaded on its own."""
    extension = _load_extension()
    if extension is None:  # pragma: no cover - a different layout: take the long way
        return full_onnx().shape_inference.infer_shapes(model, strict_mode=False)
    inferred = ModelProto()
    inferred.ParseFromString(
        extension.shape_inference.infer_shapes(model.SerializeToString(), False, False, False)
    )
    return inferred


def tensor_value_info(name: str, elem_type: int, dims: Iterable[int]) -> Any:
    """A ValueInfoProto of a tensor of a known shape (onnx.helper.make_tensor_value_info's)."""
    vi = ValueInfoProto()
    vi.name = name
    tensor_type = vi.type.tensor_type
    tensor_type.elem_type = elem_type
    tensor_type.shape.SetInParent()  # a scalar has a shape of no dimensions, not an unknown one
    for d in dims:
        tensor_type.shape.dim.add().dim_value = int(d)
    return vi


# -- tensor data ---------------------------------------------------------------------------

_DATA_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
    "raw_data",
    "external_data",
    "data_location",
)


def reset_data(tensor: TensorProto, shape: tuple[int, ...], elem_type: int) -> None:
    """Drop ``tensor``'s contents wherever they were (typed fields, raw bytes, external file) and
    give it a new shape and type; its name, doc string and metadata stay."""
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.dims[:]
    tensor.dims.extend(shape)
    tensor.data_type = elem_type


# -- element types --------------------------------------------------------------------------

#: The element types ONNX defines, as far as the installed onnx knows them. A model file may
#: name any number (a damaged file, or a type from a newer ONNX): such a tensor's values cannot
#: be read, and bnfold must say so instead of failing on a table lookup.
KNOWN_TYPES: frozenset[int] = frozenset(int(t) for t in TensorProto.DataType.values())


class UnknownElementType(ValueError):
    """A tensor whose element type ONNX does not define (as far as this onnx knows): its values
    cannot be read. The message names the tensor and the type."""


def check_known(elem_type: int, name: str) -> None:
    """``UnknownElementType`` for a tensor ``name`` of an element type ONNX does not define."""
    if elem_type not in KNOWN_TYPES:
        raise UnknownElementType(f"'{name}' has unknown element type {elem_type}")


#: ONNX element types numpy holds natively, with the typed field their values live in and how
#: a value of that field is stored (float16 in int32_data as its bit pattern).
_PLAIN: dict[int, tuple[np.dtype[Any], str]] = {
    TensorProto.FLOAT: (np.dtype("<f4"), "float_data"),
    TensorProto.DOUBLE: (np.dtype("<f8"), "double_data"),
    TensorProto.FLOAT16: (np.dtype("<f2"), "int32_data"),
    TensorProto.INT8: (np.dtype("i1"), "int32_data"),
    TensorProto.UINT8: (np.dtype("u1"), "int32_data"),
    TensorProto.INT16: (np.dtype("<i2"), "int32_data"),
    TensorProto.UINT16: (np.dtype("<u2"), "int32_data"),
    TensorProto.INT32: (np.dtype("<i4"), "int32_data"),
    TensorProto.INT64: (np.dtype("<i8"), "int64_data"),
    TensorProto.UINT32: (np.dtype("<u4"), "uint64_data"),
    TensorProto.UINT64: (np.dtype("<u8"), "uint64_data"),
    TensorProto.BOOL: (np.dtype("bool"), "int32_data"),
}
_BY_DTYPE: dict[np.dtype[Any], int] = {dt.newbyteorder("="): t for t, (dt, _) in _PLAIN.items()}


def raw_dtype(elem_type: int) -> np.dtype[Any] | None:
    """The little-endian numpy dtype whose bytes are this element type's raw data, if any."""
    plain = _PLAIN.get(elem_type)
    return plain[0] if plain is not None else None


def np_dtype_to_tensor_dtype(dtype: np.dtype[Any]) -> int:
    """The ONNX element type of a numpy dtype."""
    found = _BY_DTYPE.get(np.dtype(dtype).newbyteorder("="))
    if found is not None:
        return found
    return int(full_onnx().helper.np_dtype_to_tensor_dtype(dtype))


def tensor_dtype_to_np_dtype(elem_type: int) -> np.dtype[Any]:
    """The numpy dtype of an ONNX element type."""
    if elem_type in _PLAIN:
        native: np.dtype[Any] = _PLAIN[elem_type][0].newbyteorder("=")
        return native
    dtype: np.dtype[Any] = full_onnx().helper.tensor_dtype_to_np_dtype(elem_type)
    return dtype


def to_array(tensor: Any) -> npt.NDArray[Any]:
    """A tensor's values as numpy (what ``onnx.numpy_helper.to_array`` gives);
    ``UnknownElementType`` when ONNX does not define its element type."""
    check_known(tensor.data_type, tensor.name)
    plain = _PLAIN.get(tensor.data_type)
    dims = tuple(int(d) for d in tensor.dims)
    if plain is not None and tensor.data_location != TensorProto.EXTERNAL:
        dtype, field = plain
        count = int(np.prod(dims)) if dims else 1
        if tensor.HasField("raw_data"):
            raw = tensor.raw_data
            if len(raw) == dtype.itemsize * count:
                values = np.frombuffer(raw, dtype=dtype)
                if sys.byteorder == "big" and dtype.itemsize > 1:  # pragma: no cover
                    values = values.byteswap()
                return values.reshape(dims)
        else:
            typed = getattr(tensor, field)
            if len(typed) == count:
                if tensor.data_type == TensorProto.FLOAT16:
                    bits = np.asarray(typed, dtype=np.uint16)
                    return bits.view(np.float16).reshape(dims)
                return np.asarray(typed, dtype=dtype.newbyteorder("=")).reshape(dims)
    result: npt.NDArray[Any] = full_onnx().numpy_helper.to_array(tensor)
    return result


def from_array(array: npt.NDArray[Any], name: str) -> Any:
    """A TensorProto named ``name`` holding ``array`` as raw data."""
    elem_type = _BY_DTYPE.get(array.dtype.newbyteorder("="))
    if elem_type is None:
        return full_onnx().numpy_helper.from_array(array, name)
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = elem_type
    tensor.dims.extend(array.shape)
    values = np.ascontiguousarray(array)
    if sys.byteorder == "big" and values.dtype.itemsize > 1:  # pragma: no cover
        values = values.byteswap()
    tensor.raw_data = values.tobytes()
    return tensor


def store(tensor: TensorProto, values: npt.NDArray[Any], elem_type: int) -> None:
    """Replace the contents of ``tensor`` (name, doc string and metadata kept) with ``values``.

    Written straight into the tensor: one copy into the model, whether the old data was inline,
    in typed fields or in an external file.
    """
    raw = storable(values, elem_type).tobytes()
    reset_data(tensor, tuple(values.shape), elem_type)
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
    tensor = from_array(np.ascontiguousarray(values), name)
    if tensor.data_type != elem_type:
        raise ValueError(
            f"{name}: array is {dtype_name(tensor.data_type)}, expected {dtype_name(elem_type)}"
        )
    return tensor


# -- attributes and nodes -------------------------------------------------------------------

_SCALAR_FIELDS = {
    AttributeProto.FLOAT: "f",
    AttributeProto.INT: "i",
    AttributeProto.STRING: "s",
    AttributeProto.TENSOR: "t",
    AttributeProto.GRAPH: "g",
}
_LIST_FIELDS = {
    AttributeProto.FLOATS: "floats",
    AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors",
    AttributeProto.GRAPHS: "graphs",
}


def get_attribute_value(attr: Any) -> Any:
    """An attribute's value (as ``onnx.helper.get_attribute_value``)."""
    if attr.type in _SCALAR_FIELDS:
        return getattr(attr, _SCALAR_FIELDS[attr.type])
    if attr.type in _LIST_FIELDS:
        return list(getattr(attr, _LIST_FIELDS[attr.type]))
    return full_onnx().helper.get_attribute_value(attr)


def make_attribute(name: str, value: Any) -> Any:
    """An AttributeProto for an int, float, string, tensor, or a list of ints or floats."""
    attr = AttributeProto()
    attr.name = name
    if isinstance(value, bool | int | np.integer):
        attr.type, attr.i = AttributeProto.INT, int(value)
    elif isinstance(value, float | np.floating):
        attr.type, attr.f = AttributeProto.FLOAT, float(value)
    elif isinstance(value, str | bytes):
        attr.type, attr.s = (
            AttributeProto.STRING,
            value.encode() if isinstance(value, str) else value,
        )
    elif isinstance(value, TensorProto):
        attr.type = AttributeProto.TENSOR
        attr.t.CopyFrom(value)
    elif isinstance(value, list | tuple) and value and all(_is_int(v) for v in value):
        attr.type = AttributeProto.INTS
        attr.ints.extend(int(v) for v in value)
    elif isinstance(value, list | tuple) and value and all(_is_real(v) for v in value):
        attr.type = AttributeProto.FLOATS
        attr.floats.extend(float(v) for v in value)
    else:
        return full_onnx().helper.make_attribute(name, value)
    return attr


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer)


def _is_real(v: Any) -> bool:
    return isinstance(v, float | int | np.floating | np.integer)


def make_node(
    op_type: str, inputs: Iterable[str], outputs: Iterable[str], *, name: str, **attrs: Any
) -> Any:
    """A NodeProto of the default domain (as ``onnx.helper.make_node``, attributes sorted)."""
    node = NodeProto()
    node.op_type = op_type
    node.input.extend(inputs)
    node.output.extend(outputs)
    node.name = name
    node.attribute.extend(make_attribute(k, v) for k, v in sorted(_items(attrs)))
    return node


def _items(attrs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in attrs.items() if v is not None]
