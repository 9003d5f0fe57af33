"""Every tensor of a graph (initializers, Constant values, sparse tensors, subgraphs) and how many
elements and bytes a tensor's header says it holds."""

from __future__ import annotations

from collections.abc import Iterator

from bnfold.errors import InputError
from bnfold.model import proto
from bnfold.model.proto import AttributeProto, TensorProto


def node_tensors(node: proto.NodeProto) -> Iterator[TensorProto]:
    """Every tensor a node holds: attribute values and the initializers of its subgraphs."""
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == AttributeProto.GRAPH:
            yield from graph_tensors(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield from graph_tensors(g)


def graph_tensors(graph: proto.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        yield from node_tensors(node)


#: Bytes per element of the fixed-size element types, to know a raw tensor's size unread.
_ITEM_SIZE: dict[int, int] = {
    TensorProto.FLOAT: 4,
    TensorProto.UINT8: 1,
    TensorProto.INT8: 1,
    TensorProto.UINT16: 2,
    TensorProto.INT16: 2,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
    TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.UINT32: 4,
    TensorProto.UINT64: 8,
    TensorProto.COMPLEX64: 8,
    TensorProto.COMPLEX128: 16,
    TensorProto.BFLOAT16: 2,
}


#: Element types packed two to a byte (int4, uint4, float4e2m1).
_PACKED_4BIT = (21, 22, 23)
#: float8 types: one byte each.
_FLOAT8 = (17, 18, 19, 20)


def element_count(tensor: TensorProto) -> int:
    """The number of elements ``tensor``'s dims declare (InputError for a negative dim)."""
    n = 1
    for d in tensor.dims:
        if d < 0:
            raise InputError(f"tensor '{tensor.name}' has a negative dimension {d}")
        n *= int(d)
    return n


def expected_nbytes(tensor: TensorProto) -> int | None:
    """How many bytes of raw data ``tensor``'s dims and type need; None for variable-size types
    (strings) and types this bnfold does not know."""
    n = element_count(tensor)
    item = _ITEM_SIZE.get(tensor.data_type)
    if item is not None:
        return item * n
    if tensor.data_type in _FLOAT8:
        return n
    if tensor.data_type in _PACKED_4BIT:
        return (n + 1) // 2
    return None
