"""What makes a model unusable, refused before any fold (exit 3): external data outside its
folder or of the wrong size, short tensor data, a node reading a value nothing produces, a
cycle, an operator domain the model does not import."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnfold.errors import InputError
from bnfold.model import proto
from bnfold.model.external import external_ref
from bnfold.model.nodes import DEFAULT_DOMAINS, subgraphs
from bnfold.model.proto import TensorProto
from bnfold.model.tensors import element_count, expected_nbytes, node_tensors


def check_tensors(
    model: proto.ModelProto, path: Path, headers: frozenset[str] | set[str] = frozenset()
) -> None:
    """Refuse tensors whose data cannot be what their dims and type say, and external data
    outside the model's folder, before anything reads them (``headers``: main-graph
    initializers whose bytes were left in the file, checked by their caller)."""
    main = (t for t in model.graph.initializer if t.name not in headers)
    rest = (t for node in model.graph.node for t in node_tensors(node))
    functions = (t for f in model.functions for node in f.node for t in node_tensors(node))
    for tensor in itertools.chain(main, rest, functions):
        try:
            _check_tensor(tensor, path.parent)
        except InputError as exc:
            raise InputError(f"{path}: {exc.message}", hint=exc.hint) from None
    for sparse in _sparse_tensors(model):
        for part in (sparse.values, sparse.indices):
            if part.data_location == TensorProto.EXTERNAL:
                raise InputError(
                    f"{path}: sparse tensor '{part.name or sparse.values.name}' keeps its data in "
                    "an external file, which bnfold does not read or write",
                    hint="store the sparse tensor inline",
                )


def _sparse_tensors(model: proto.ModelProto) -> Iterator[Any]:
    """Every sparse tensor: sparse initializers and sparse attribute values, in every graph."""

    def in_graph(graph: proto.GraphProto) -> Iterator[Any]:
        yield from graph.sparse_initializer
        for node in graph.node:
            yield from in_nodes([node])

    def in_nodes(nodes: Any) -> Iterator[Any]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor
                yield from attr.sparse_tensors
                if attr.HasField("g"):
                    yield from in_graph(attr.g)
                for g in attr.graphs:
                    yield from in_graph(g)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


#: The typed field that holds each element type's values, and values per element.
_TYPED_FIELDS: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.STRING: ("string_data", 1),
    **{
        t: ("int32_data", 1)
        for t in (
            TensorProto.INT32,
            TensorProto.INT16,
            TensorProto.INT8,
            TensorProto.UINT16,
            TensorProto.UINT8,
            TensorProto.BOOL,
            TensorProto.FLOAT16,
            TensorProto.BFLOAT16,
        )
    },
}


def _check_tensor(tensor: TensorProto, base_dir: Path) -> None:
    if tensor.data_location == TensorProto.EXTERNAL and tensor.data_type in (
        TensorProto.STRING,
        TensorProto.UNDEFINED,
    ):
        raise InputError(f"tensor '{tensor.name}': string tensors cannot have external data")
    if tensor.data_location == TensorProto.EXTERNAL:
        have, what = external_ref(tensor, base_dir).length, "external data"
    elif tensor.HasField("raw_data"):
        have, what = len(tensor.raw_data), "raw data"
    else:
        typed = _TYPED_FIELDS.get(tensor.data_type)
        if typed is None:
            return
        name, per = typed
        count, want = len(getattr(tensor, name)), element_count(tensor) * per
        if count != want:
            raise InputError(
                f"tensor '{tensor.name}' holds {count} values, but its shape {list(tensor.dims)} "
                f"needs {want}",
                hint="the model is damaged or was edited by hand",
            )
        return
    check_size(tensor, have, what)


def check_size(tensor: TensorProto, have: int, what: str, path: Path | None = None) -> None:
    need = expected_nbytes(tensor)  # also refuses negative dims
    if need is not None and have != need:
        where = f"{path}: " if path is not None else ""
        raise InputError(
            f"{where}tensor '{tensor.name}' has {have} bytes of {what}, but its shape "
            f"{list(tensor.dims)} and type need {need}",
            hint="the model or its data file is damaged, truncated or from another model",
        )


def check_structure(model: proto.ModelProto, path: Path | str = "<model>") -> None:
    """Refuse what cannot be a working model; accept what is merely not checker-clean."""
    if model.ir_version < 1 or not model.HasField("graph"):
        raise InputError(
            f"{path}: not an ONNX model (no graph or IR version)", hint="is this the right file?"
        )
    if not model.graph.output:
        raise InputError(f"{path}: the graph has no outputs")
    seen: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.name in seen:
            raise InputError(
                f"{path}: two initializers of the main graph are named '{tensor.name}'",
                hint="the model is damaged or was edited by hand",
            )
        seen.add(tensor.name)
    domains = {o.domain for o in model.opset_import} | set(DEFAULT_DOMAINS)
    local_functions = {(f.domain, f.name) for f in model.functions}
    _check_graph(model.graph, set(), domains, local_functions, path)


def _check_graph(
    graph: proto.GraphProto,
    outer: set[str],
    domains: set[str],
    functions: set[tuple[str, str]],
    path: Path | str,
) -> None:
    known = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, proto.NodeProto] = {}
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        for o in node.output:
            if not o:
                continue
            if o in producer or o in initializers:
                raise InputError(
                    f"{path}: '{o}' is produced by node '{node.name or node.op_type}' and also by "
                    + ("an initializer" if o in initializers else "another node"),
                    hint="the model is damaged or was edited by hand",
                )
            producer[o] = node
    produced = set(producer)
    available = known | produced
    _check_acyclic(graph, producer, path)
    for node in graph.node:
        if node.domain not in domains and (node.domain, node.op_type) not in functions:
            raise InputError(
                f"{path}: node '{node.name or node.op_type}' uses operator domain '{node.domain}', "
                "which the model does not import",
                hint="the model is incomplete or was edited by hand",
            )
        for name in node.input:
            if name and name not in available:
                raise InputError(
                    f"{path}: node '{node.name or node.op_type}' reads '{name}', which nothing "
                    "in the graph produces",
                    hint="the model is incomplete or was edited by hand",
                )
        for _, body in subgraphs(node):
            _check_graph(body, available, domains, functions, path)
    for out in graph.output:
        if out.name not in available:
            raise InputError(f"{path}: graph output '{out.name}' is not produced by anything")


def _check_acyclic(
    graph: proto.GraphProto, producer: dict[str, proto.NodeProto], path: Path | str
) -> None:
    """Refuse a graph whose nodes read, directly or not, their own outputs (Kahn's algorithm)."""
    nodes = list(graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            source = producer.get(name)
            if source is not None:
                waiting[i] += 1
                readers.setdefault(index[id(source)], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if done < len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i] > 0)
        raise InputError(
            f"{path}: node '{stuck.name or stuck.op_type}' is part of a cycle (it reads, through "
            "other nodes, its own output)",
            hint="the model is damaged or was edited by hand",
        )
