"""Use-def queries over every graph of a model: producer, consumers, is-constant.

A *scope* is one list of nodes with its own names: the main graph, an If/Loop/Scan body (which may
read names of the graphs around it) or a model-local function body. Consumers are counted across
scopes: a node whose body reads an outer name consumes that name, as onnxruntime counts it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.errors import InputError
from bnfold.model import proto
from bnfold.model.constfold import EVALUATORS, Budget, CannotEvaluate, TooLarge, evaluate
from bnfold.model.external import read_external
from bnfold.model.nodes import (
    DEFAULT_DOMAINS,
    constant_node_is_numeric,
    constant_node_tensor,
    constant_node_value,
    function_label,
    is_op,
    model_opset,
    subgraph_paths,
)
from bnfold.model.proto import TensorProto
from bnfold.model.store import TensorStore


@dataclass
class Constant:
    """A value known before run time: an initializer or a Constant node's output."""

    name: str
    scope: Scope
    tensor: TensorProto | None = None  # initializer, or the Constant node's `value`
    node: proto.NodeProto | None = None  # the Constant node, or the node that computes it
    computed: bool = False  # evaluated from a constant subgraph (see bnfold.model.constfold)
    _array: npt.NDArray[Any] | None = field(default=None, repr=False)

    @property
    def elem_type(self) -> int:
        if self.tensor is not None:
            return int(self.tensor.data_type)
        return int(proto.np_dtype_to_tensor_dtype(self.array().dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        if self.tensor is not None:
            return tuple(int(d) for d in self.tensor.dims)
        return tuple(self.array().shape)

    def array(self) -> npt.NDArray[Any]:
        """The value as numpy, read once; ``proto.UnknownElementType`` when ONNX does not define
        its element type (the values cannot be read)."""
        if self._array is None:
            if self.tensor is not None:
                proto.check_known(self.tensor.data_type, self.name)
                store = self.scope.store
                if store is not None and self.node is None and self.tensor.name in store:
                    self._array = store.array(self.tensor)  # a header: its bytes are elsewhere
                elif self.tensor.data_location == TensorProto.EXTERNAL:
                    self._array = self._read_external(self.tensor)
                else:
                    self._array = proto.to_array(self.tensor)
            else:
                assert self.node is not None
                self._array = constant_node_value(self.node)
        return self._array

    def _read_external(self, tensor: TensorProto) -> npt.NDArray[Any]:
        """Read just this tensor from the external data file it points at (a tensor outside the
        main graph's initializers: those are in the model's ``TensorStore``)."""
        base_dir = self.scope.base_dir
        if base_dir is None:
            raise InputError(
                f"tensor '{self.name}' keeps its data in an external file that was not loaded",
                hint="load the model with its external data (bnfold.fold_file does)",
            )
        try:
            raw = read_external(tensor, base_dir)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"tensor '{self.name}': cannot read its external data ({exc})"
            ) from None
        loaded = TensorProto()
        loaded.data_type = tensor.data_type
        loaded.dims.extend(int(d) for d in tensor.dims)
        loaded.raw_data = raw
        return proto.to_array(loaded)


class NotConstant(Exception):
    """Raised by Scope.constant with the reason a name is not a constant."""


#: How many nodes deep a constant subgraph may be (a longer chain is run-time computation).
MAX_DEPTH = 32
_IN_PROGRESS = object()  # marks a value being evaluated (a cycle means it is not a constant)


class Scope:
    """One graph or function body, indexed for use-def queries.

    The index is a snapshot: after edits it is rebuilt (see ``ModelIndex``) rather than patched.
    """

    def __init__(
        self,
        path: str,
        nodes: Any,
        *,
        graph: proto.GraphProto | None,
        function: proto.FunctionProto | None,
        parent: Scope | None,
        opset: int,
        ir_version: int,
        base_dir: Path | None = None,
        store: TensorStore | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.path = path
        self.budget = (
            budget  # bytes constant evaluation may still allocate (bnfold.model.constfold)
        )
        self.base_dir = base_dir  # where tensors left in external data files are read from
        self.store = store  # where the main graph's header initializers have their bytes
        self.nodes: list[proto.NodeProto] = list(nodes)
        self.container = nodes
        self.graph = graph
        self.function = function
        self.parent = parent
        self.opset = opset
        self.ir_version = ir_version
        self.children: list[Scope] = []
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        if graph is not None:
            self.inputs = [vi.name for vi in graph.input]
            self.outputs = [vi.name for vi in graph.output]
            self.initializers = {t.name: t for t in graph.initializer}
        else:
            assert function is not None
            self.inputs = list(function.input)
            self.outputs = list(function.output)
            self.initializers = {}
        self.input_set = set(self.inputs)
        self.output_set = set(self.outputs)
        self.free_names: set[str] = set()
        self._computed: dict[str, Constant | NotConstant | object] = {}
        self._depth = 0
        #: a function body's inputs that every call of it binds to one constant (set by the fold
        #: for a function it specialises per call, see ``bnfold.fold.calls``), and, for inputs
        #: that are not, why: which call passes what
        self.bindings: dict[str, Constant] = {}
        self.unbound: dict[str, str] = {}

    # -- queries ------------------------------------------------------------------------------

    def defines(self, name: str) -> bool:
        return name in self.producer or name in self.input_set or name in self.initializers

    def producer_of(self, name: str) -> proto.NodeProto | None:
        idx = self.producer.get(name)
        return None if idx is None else self.nodes[idx]

    def uses(self, name: str) -> int:
        """Readers of ``name`` here: node inputs, nested bodies, and graph outputs."""
        return len(self.consumers.get(name, ())) + (name in self.output_set)

    def consumer_nodes(self, name: str) -> list[proto.NodeProto]:
        return [self.nodes[i] for i in self.consumers.get(name, ())]

    def index_of(self, node: proto.NodeProto) -> int:
        """The node's position (by its output, which is unique in SSA form)."""
        if node.output and node.output[0] in self.producer:
            return self.producer[node.output[0]]
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise KeyError(node.name)

    def overridable(self, name: str) -> bool:
        """An initializer that is also a graph input can be replaced at run time (IR >= 4)."""
        return name in self.initializers and name in self.input_set and self.ir_version >= 4

    def constant(self, name: str) -> Constant:
        """The constant behind ``name`` as seen from this scope, or NotConstant with the reason."""
        if not name:
            raise NotConstant("it is absent")
        scope: Scope | None = self
        while scope is not None:
            idx = scope.producer.get(name)
            if idx is not None:
                node = scope.nodes[idx]
                if is_op(node, "Constant") and constant_node_is_numeric(node):
                    return Constant(name, scope, tensor=constant_node_tensor(node), node=node)
                if is_op(node, "Constant"):
                    raise NotConstant("it is a Constant bound to a function attribute")
                return scope._evaluated(name, node)
            if name in scope.initializers:
                if scope.overridable(name):
                    raise NotConstant(
                        "it is an initializer that is also a graph input, so it can be "
                        "replaced at run time"
                    )
                return Constant(name, scope, tensor=scope.initializers[name])
            if name in scope.input_set:
                if scope.function is not None:
                    bound = scope.bindings.get(name)
                    if bound is not None:
                        return bound
                    if name in scope.unbound:
                        raise NotConstant(scope.unbound[name])
                what = "function input" if scope.function is not None else "graph input"
                raise NotConstant(f"it is a {what}")
            scope = scope.parent
        raise NotConstant("nothing in the model produces it")

    def _evaluated(self, name: str, node: proto.NodeProto) -> Constant:
        """``name`` computed by ``node`` from constants only, evaluated once; else NotConstant."""
        cached = self._computed.get(name)
        if isinstance(cached, Constant):
            return cached
        if isinstance(cached, NotConstant):
            raise cached
        if cached is _IN_PROGRESS or node.output[0] != name or self._depth >= MAX_DEPTH:
            raise NotConstant(f"it is computed at run time by a {node.op_type} node")
        refused = self.budget.refused.get((self.path, name)) if self.budget else None
        if refused is not None:
            raise NotConstant(refused)
        self._computed[name] = _IN_PROGRESS
        self._depth += 1
        try:
            known = node.op_type in (*EVALUATORS, "Shape", "CastLike")
            if not known or not is_op(node, node.op_type):
                raise NotConstant(f"it is computed at run time by a {node.op_type} node")
            inputs: list[npt.NDArray[Any] | None] = []
            for k, source in enumerate(node.input):
                if not source:
                    inputs.append(None)
                    continue
                try:
                    inputs.append(self._operand(node, k, source))
                except (NotConstant, proto.UnknownElementType) as exc:
                    raise NotConstant(
                        f"it is computed by a {node.op_type} node from '{source}', and {exc}"
                    ) from None
            try:
                value = evaluate(node, inputs, self.opset, self.budget)
            except CannotEvaluate as exc:
                why = (
                    f"it is computed by a {node.op_type} node, and bnfold cannot evaluate it: {exc}"
                )
                if isinstance(exc, TooLarge) and self.budget is not None:
                    self.budget.refused[(self.path, name)] = why
                raise NotConstant(why) from None
        except NotConstant as exc:
            self._computed[name] = exc
            raise
        finally:
            self._depth -= 1
        const = Constant(name, self, node=node, computed=True, _array=value)
        self._computed[name] = const
        return const

    def _operand(self, node: proto.NodeProto, k: int, source: str) -> npt.NDArray[Any]:
        """Input ``k`` of ``node`` as its evaluator takes it. What a Shape reads and what a
        CastLike takes its type from need not be constants: only their shape (a constant's
        header: a weight is not read for it) or their element type (as declared) are known
        before run time, and they stand in as an empty array of that shape or type (torch's
        dynamo exporter writes a Conv's missing bias as Expand(CastLike(0, x), Shape(W)[0:1]))."""
        if is_op(node, "Shape"):
            shape = self.constant(source).shape
            return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))
        if is_op(node, "CastLike") and k == 1:
            try:
                return np.empty(0, self.constant(source).array().dtype)
            except NotConstant:
                elem_type = value_elem_type(self, source)
                if elem_type is None:
                    raise
                proto.check_known(elem_type, source)
                return np.empty(0, proto.tensor_dtype_to_np_dtype(elem_type))
        return self.constant(source).array()

    def is_exclusive(self, const: Constant, node: proto.NodeProto) -> bool:
        """True when ``node`` alone reads ``const`` anywhere, so it may change in place."""
        if const.scope is not self or const.computed:
            return False
        name = const.name
        if name in self.output_set or name in self.input_set:
            return False
        return self.uses(name) == 1 and list(node.input).count(name) == 1

    def took_over(
        self, index: int, output: str, made: Sequence[TensorProto | proto.NodeProto]
    ) -> None:
        """Bring the snapshot up to date for node ``index`` after a fold rewrote it in place: it
        now writes ``output`` (the value of the node folded into it) and alone reads the new
        constants ``made`` (initializers, or Constant nodes of a function body, which the pass
        inserts into the body when it ends: the snapshot lists them after the others). So the
        next BN or scale layer of a chain sees the layer as it is now and folds into it in the
        same pass. Nothing else is updated: the nodes the fold deletes stay in the snapshot,
        marked changed, and whoever meets them waits for the next pass."""
        self.producer[output] = index
        for const in made:
            if isinstance(const, TensorProto):
                name = const.name
                self.initializers[name] = const
            else:
                name = const.output[0]
                self.nodes.append(const)
                self.producer[name] = len(self.nodes) - 1
            self.consumers[name] = [index]


class ModelIndex:
    """Every scope of a model, indexed; rebuilt after each round of edits."""

    def __init__(
        self,
        model: proto.ModelProto,
        base_dir: str | os.PathLike[str] | None = None,
        store: TensorStore | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.model = model
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.store = store
        # one fold shares its budget across passes (and so indexes); otherwise one per index
        self.budget = budget if budget is not None else Budget()
        self.opset = model_opset(model)
        self.scopes: list[Scope] = []
        main = self._build_graph("main", model.graph, None, self.opset)
        self.main = main
        for func in model.functions:
            fopset = next(
                (o.version for o in func.opset_import if o.domain in DEFAULT_DOMAINS), self.opset
            )
            scope = Scope(
                function_label(func),
                func.node,
                graph=None,
                function=func,
                parent=None,
                opset=int(fopset),
                ir_version=model.ir_version,
                base_dir=self.base_dir,
                budget=self.budget,
            )
            self.scopes.append(scope)
            self._index(scope)

    def _build_graph(
        self, path: str, graph: proto.GraphProto, parent: Scope | None, opset: int
    ) -> Scope:
        scope = Scope(
            path,
            graph.node,
            graph=graph,
            function=None,
            parent=parent,
            opset=opset,
            ir_version=self.model.ir_version,
            base_dir=self.base_dir,
            store=self.store if parent is None else None,  # the store holds main's only
            budget=self.budget,
        )
        self.scopes.append(scope)
        self._index(scope)
        return scope

    def _index(self, scope: Scope) -> None:
        used: set[str] = set(scope.outputs)
        for i, node in enumerate(scope.nodes):
            for out in node.output:
                if out:
                    scope.producer[out] = i
        for i, node in enumerate(scope.nodes):
            for name in node.input:
                if name:
                    scope.consumers.setdefault(name, []).append(i)
                    used.add(name)
            for path, body in subgraph_paths(scope.path, node, i):
                child = self._build_graph(path, body, scope, scope.opset)
                scope.children.append(child)
                for name in sorted(child.free_names):
                    scope.consumers.setdefault(name, []).append(i)
                    used.add(name)
        scope.free_names = {n for n in used if not scope.defines(n)}

    def release(self) -> None:
        """Drop the values evaluated through this index (they reference their scope, so without
        this they would wait for the cyclic garbage collector)."""
        for scope in self.scopes:
            scope._computed.clear()
            scope.bindings = {}

    def all_names(self) -> set[str]:
        """Every value name used anywhere in the model (for picking new unique names)."""
        names: set[str] = set()
        for scope in self.scopes:
            names.update(scope.inputs, scope.outputs, scope.initializers)
            for node in scope.nodes:
                names.update(node.input)
                names.update(node.output)
            if scope.graph is not None:
                names.update(vi.name for vi in scope.graph.value_info)
        names.discard("")
        return names


Shape = tuple[int | None, ...]  # None: a symbolic or unknown dimension


def value_rank(scope: Scope, name: str) -> int | None:
    """The rank of ``name`` where the model declares it (value_info, inputs, initializers)."""
    shape = value_shape(scope, name)
    return None if shape is None else len(shape)


def value_shape(scope: Scope, name: str) -> Shape | None:
    """The shape of ``name`` where the model declares it (value_info, inputs, initializers)."""
    s: Scope | None = scope
    while s is not None:
        if s.graph is not None:
            for vi in (*s.graph.value_info, *s.graph.input, *s.graph.output):
                if vi.name == name and vi.type.HasField("tensor_type"):
                    found = type_shape(vi.type)
                    if found is not None:
                        return found
            if name in s.initializers:
                return tuple(int(d) for d in s.initializers[name].dims)
        if s.defines(name):
            return None
        s = s.parent
    return None


def type_shape(t: proto.TypeProto) -> Shape | None:
    """The (possibly partial) shape of a tensor type, or None when even the rank is unknown."""
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)


def value_elem_type(scope: Scope, name: str) -> int | None:
    """The element type of ``name`` where the model declares it (inputs, value_info, outputs,
    initializers), or None."""
    s: Scope | None = scope
    while s is not None:
        if s.graph is not None:
            for vi in (*s.graph.input, *s.graph.value_info, *s.graph.output):
                if vi.name == name and vi.type.HasField("tensor_type"):
                    elem_type = int(vi.type.tensor_type.elem_type)
                    return elem_type or None
            if name in s.initializers:
                return int(s.initializers[name].data_type)
        if s.defines(name):
            return None
        s = s.parent
    return None
