"""Nodes and their attributes, and the subgraphs a node holds: what every graph query needs.
(Attribute references, ``ref_attr_name``, are values a function's call site gives.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.model import proto
from bnfold.model.proto import AttributeProto, TensorProto

DEFAULT_DOMAINS = ("", "ai.onnx")


def is_op(node: proto.NodeProto, op_type: str) -> bool:
    """True for a node of the default ONNX domain with this op_type."""
    return node.op_type == op_type and node.domain in DEFAULT_DOMAINS


def subgraphs(node: proto.NodeProto) -> Iterator[tuple[str, proto.GraphProto]]:
    """(label, body) for every graph attribute of a node (If branches, Loop/Scan bodies, ...)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", g


def subgraph_paths(
    path: str, node: proto.NodeProto, index: int
) -> Iterator[tuple[str, proto.GraphProto]]:
    """(path, body) for every graph attribute of ``node``, the ``index``-th node of the graph at
    ``path``: the path a ``Scope`` of that body has (``main/<node>.then_branch``)."""
    label = node.name or f"{node.op_type}({node.output[0] if node.output else index})"
    for attr_label, body in subgraphs(node):
        yield f"{path}/{label}.{attr_label}", body


def get_attr(node: proto.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute's value, or ``default`` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return proto.get_attribute_value(attr)
    return default


def attr_is_reference(node: proto.NodeProto, names: tuple[str, ...] | None = None) -> str | None:
    """The first attribute (of ``names``, or any) bound to a function attribute, else None."""
    for attr in node.attribute:
        if attr.ref_attr_name and (names is None or attr.name in names):
            return str(attr.name)
    return None


def set_attr(node: proto.NodeProto, name: str, value: Any) -> None:
    del_attr(node, name)
    node.attribute.append(proto.make_attribute(name, value))


def del_attr(node: proto.NodeProto, name: str) -> None:
    for i in reversed(range(len(node.attribute))):
        if node.attribute[i].name == name:
            del node.attribute[i]


def model_opset(model: proto.ModelProto) -> int:
    """The default-domain opset version of the model (ONNX's default when it is missing)."""
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return int(opset.version)
    return 1


def function_label(func: proto.FunctionProto) -> str:
    """The path of a function body's scope: ``function:domain.name``."""
    return f"function:{func.domain}.{func.name}" if func.domain else f"function:{func.name}"


def constant_node_value(node: proto.NodeProto) -> npt.NDArray[Any]:
    attr = node.attribute[0]
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    raise ValueError(f"Constant attribute {attr.name} holds no numeric tensor")


def constant_node_tensor(node: proto.NodeProto) -> TensorProto | None:
    """The `value` tensor of a Constant node, when that is how it holds its value."""
    if len(node.attribute) != 1 or node.attribute[0].ref_attr_name:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.type == AttributeProto.TENSOR:
        value: TensorProto = attr.t
        return value
    return None


def constant_node_is_numeric(node: proto.NodeProto) -> bool:
    if len(node.attribute) != 1 or node.attribute[0].ref_attr_name:
        return False
    return node.attribute[0].name in (
        "value",
        "value_float",
        "value_floats",
        "value_int",
        "value_ints",
    )
