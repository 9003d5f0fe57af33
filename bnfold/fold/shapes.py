"""Tensor shapes for the rules: the ones the graph itself determines, checked against the
declared ones.

A model's declared shapes (value_info, graph outputs, the inputs and outputs of If/Loop/Scan
bodies) are claims of an untrusted file: onnxruntime runs the graph whatever they say, so a fold
decided on a wrong one writes a wrong model (caught by verification, but not under --no-verify).
The shapes therefore come from onnx shape inference on a copy of the model without those
declarations and without its large weights (typed inputs of their real dims): initializer dims,
constant Reshape targets, the main graph's input shapes (onnxruntime enforces them) and the ops'
semantics. Only a custom op's outputs keep their declared shapes there: inference cannot compute
them, so the declaration is all there is. A declared shape only fills in what inference leaves
unknown; when it contradicts what inference computed, the rule's BN is skipped
(``declared_shape_conflict``): bnfold cannot tell which of the two is wrong.

Shape inference runs at most once per fold, on first use, and costs graph size, not weight size
(nor ``import onnx``: see ``proto.infer_shapes``).
Shapes are kept per graph: sibling If branches may reuse a name for values of different shapes.
"""

from __future__ import annotations

from bnfold.fold.rules.reasons import Reason, Skip
from bnfold.model import proto
from bnfold.model.graph import Scope, Shape, type_shape, value_shape
from bnfold.model.nodes import subgraph_paths
from bnfold.model.store import TensorStore


class Shapes:
    """Tensor shapes: inferred from the graph on a weightless, undeclared copy (on demand),
    completed and checked by the declared ones."""

    def __init__(self, model: proto.ModelProto, store: TensorStore | None = None) -> None:
        self.model = model
        self.store = store
        self._inferred: dict[tuple[str, str], Shape] | None = None
        #: graph paths that two bodies share (duplicate node names): their shapes are not told
        self._ambiguous: set[str] = set()
        self.failure: str | None = None

    def rank(self, scope: Scope, name: str) -> int | None:
        shape = self.shape(scope, name)
        return None if shape is None else len(shape)

    def shape(self, scope: Scope, name: str) -> Shape | None:
        """The shape of ``name`` as ``scope`` sees it, or None when unknown; Skip
        (declared_shape_conflict) when the model declares one the graph contradicts."""
        home = _home(scope, name)
        given = _given(home, name)
        if given is not None:
            return given
        if self._inferred is None:
            self._inferred = self._infer()
        if home.path in self._ambiguous:
            return None
        return _reconcile(name, value_shape(scope, name), self._inferred.get((home.path, name)))

    def _infer(self) -> dict[tuple[str, str], Shape]:
        light = weightless_copy(self.model, self.store)
        try:
            inferred = proto.infer_shapes(light)
        except Exception as exc:  # shape inference is best effort; the BN is skipped, with why
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return {}
        shapes: dict[tuple[str, str], Shape] = {}
        seen: set[str] = set()

        def collect(graph: proto.GraphProto, path: str) -> None:
            if path in seen:
                self._ambiguous.add(path)
            seen.add(path)
            for vi in (*graph.value_info, *graph.output, *graph.input):
                found = type_shape(vi.type) if vi.type.HasField("tensor_type") else None
                if found is not None:
                    shapes.setdefault((path, vi.name), found)
            for i, node in enumerate(graph.node):
                for child, body in subgraph_paths(path, node, i):
                    collect(body, child)

        collect(inferred.graph, "main")
        return shapes


def _home(scope: Scope, name: str) -> Scope:
    """The scope that defines ``name`` (an outer one for a value a body reads from outside)."""
    s: Scope | None = scope
    while s is not None:
        if s.defines(name):
            return s
        s = s.parent
    return scope


def _given(home: Scope, name: str) -> Shape | None:
    """The shape that is a fact, not a claim: a main-graph input's (onnxruntime refuses data of
    another shape) or an initializer's dims."""
    if home.graph is None:
        return None
    if home.parent is None and name in home.input_set:
        for vi in home.graph.input:
            if vi.name == name and vi.type.HasField("tensor_type"):
                found = type_shape(vi.type)
                if found is not None:
                    return found
    if name in home.initializers:
        return tuple(int(d) for d in home.initializers[name].dims)
    return None


def _reconcile(name: str, declared: Shape | None, inferred: Shape | None) -> Shape | None:
    """The inferred shape, its unknown dimensions taken from the declared one; Skip when the
    two disagree on the rank or on a dimension both know."""
    if inferred is None or declared is None:
        return inferred if declared is None else declared
    if len(declared) != len(inferred) or any(
        d is not None and i is not None and d != i for d, i in zip(declared, inferred, strict=False)
    ):
        raise Skip(
            Reason.DECLARED_SHAPE_CONFLICT,
            f"the model declares '{name}' with shape {list(declared)}, but its graph computes "
            f"{list(inferred)}: bnfold does not decide a fold on shapes that contradict each "
            "other (remove or correct the model's value_info)",
        )
    return tuple(i if i is not None else d for d, i in zip(declared, inferred, strict=True))


def weightless_copy(model: proto.ModelProto, store: TensorStore | None = None) -> proto.ModelProto:
    """The model with large initializers turned into typed inputs (cheap to shape-infer) and
    without the shapes it only claims (value_info, graph outputs, body inputs and outputs):
    inference computes them from the graph alone, except what it cannot compute at all (the
    outputs of ops it has no schema for)."""
    light = proto.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, dst = model.graph, light.graph
    dst.name = src.name
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    names = {vi.name for vi in src.input}
    for t in src.initializer:
        if (
            (store is not None and t.name in store)
            or t.data_location == proto.TensorProto.EXTERNAL
            or len(t.raw_data) > 4096
            or len(t.float_data) > 1024
        ):
            if t.name not in names:
                dst.input.append(proto.tensor_value_info(t.name, t.data_type, t.dims))
        else:
            dst.initializer.append(t)
    dst.node.extend(src.node)
    _drop_claims(dst, {(f.domain, f.name) for f in model.functions}, main=True)
    return light


#: Domains whose ops onnx shape inference knows (the rest are custom ops: onnxruntime's
#: com.microsoft, a converter's own).
INFERRED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")


def _drop_claims(graph: proto.GraphProto, local: set[tuple[str, str]], *, main: bool) -> None:
    """Remove the declared shapes of ``graph`` and its bodies (not the main graph's inputs),
    except those of custom ops' outputs: there the declared shape is all there is, and
    inference carries it on to the nodes after them."""
    custom = {
        out
        for node in graph.node
        if node.domain not in INFERRED_DOMAINS and (node.domain, node.op_type) not in local
        for out in node.output
    }
    kept = [vi for vi in graph.value_info if vi.name in custom]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for vi in (*graph.output, *(() if main else graph.input)):
        if vi.type.HasField("tensor_type") and vi.name not in custom:
            vi.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == proto.AttributeProto.GRAPH:
                _drop_claims(attr.g, local, main=False)
            for body in attr.graphs:
                _drop_claims(body, local, main=False)
