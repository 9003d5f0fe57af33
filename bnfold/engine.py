"""The fold pass: find every BatchNormalization, ask the rule for its producer, apply the plan.

Passes repeat until one folds nothing, so Conv -> BN -> BN folds both. Within a pass the index is a
snapshot; a pattern that touches a node already changed in the pass is deferred to the next one.
Afterwards only what the folds made unused is removed.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
from onnx import helper

from bnfold import numerics
from bnfold.constfold import EVALUATORS
from bnfold.graph import (
    Constant,
    ModelIndex,
    NameAllocator,
    NotConstant,
    Scope,
    Shape,
    close_maps,
    del_attr,
    is_op,
    release_pages,
    set_attr,
    type_shape,
    value_shape,
)
from bnfold.report import BNDecision, FoldReport
from bnfold.rules import DEFAULT_RULES, FORWARD_RULES, FoldRule, ForwardRule
from bnfold.rules._base import (
    Chain,
    Defer,
    FoldPlan,
    Reason,
    Skip,
    TensorUpdate,
    check_mode,
    find_following,
    read_batchnorm,
    read_scale,
    split_constant,
    walk_chain,
)
from bnfold.wire import hold

MAX_PASSES = 64
SUFFIX = "_bnfolded"


def count_nodes(model: onnx.ModelProto) -> int:
    """Nodes in the main graph, every subgraph and every local function."""
    return sum(len(scope.nodes) for scope in ModelIndex(model).scopes)


class _Ranks:
    """Tensor shapes: declared ones first, onnx shape inference (on a weightless copy) on demand."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self._inferred: dict[str, Shape] | None = None
        self.failure: str | None = None

    def rank(self, scope: Scope, name: str) -> int | None:
        shape = self.shape(scope, name)
        return None if shape is None else len(shape)

    def shape(self, scope: Scope, name: str) -> Shape | None:
        declared = value_shape(scope, name)
        if declared is not None and all(d is not None for d in declared):
            return declared
        if self._inferred is None:
            self._inferred = self._infer()
        return self._inferred.get(name, declared)

    def _infer(self) -> dict[str, Shape]:
        light = _weightless_copy(self.model)
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
        except Exception as exc:  # shape inference is best effort; the BN is skipped, with why
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return {}
        ranks: dict[str, Shape] = {}

        def collect(graph: onnx.GraphProto) -> None:
            for vi in (*graph.value_info, *graph.output, *graph.input):
                found = type_shape(vi.type) if vi.type.HasField("tensor_type") else None
                if found is not None:
                    ranks.setdefault(vi.name, found)
            for node in graph.node:
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        collect(attr.g)
                    for g in attr.graphs:
                        collect(g)

        collect(inferred.graph)
        return ranks


def _weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large initializers turned into typed inputs: cheap to shape-infer."""
    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, dst = model.graph, light.graph
    dst.name = src.name
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if (
            t.data_location == onnx.TensorProto.EXTERNAL
            or len(t.raw_data) > 4096
            or len(t.float_data) > 1024
        ):
            if t.name not in declared:
                dst.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            dst.initializer.append(t)
    dst.node.extend(src.node)
    return light


@dataclass
class _Pending:
    """Structural edits collected during a pass and applied at its end."""

    deletes: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    inserts: dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto]]] = field(default_factory=dict)


@dataclass
class _Released:
    """Names a fold stopped using: removed at the end if nothing else reads them."""

    constants: dict[tuple[str, str], None] = field(default_factory=dict)
    values: dict[tuple[str, str], None] = field(default_factory=dict)


def _safe_name(base: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./:-]", "_", base) or "t"


class FoldEngine:
    """Folds every foldable BatchNormalization of one model, in place."""

    def __init__(
        self,
        model: onnx.ModelProto,
        rules: Sequence[FoldRule] = DEFAULT_RULES,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        forward_rules: Sequence[ForwardRule] = FORWARD_RULES,
        hold: bool = False,
    ) -> None:
        self.model = model
        self.base_dir = base_dir
        # With ``hold``, folded main-graph weights stay numpy arrays until bnfold writes the file
        # (bnfold.writer), instead of being copied into the model first.
        self.held: dict[str, npt.NDArray[Any]] | None = {} if hold else None
        self.maps: dict[Path, mmap.mmap] = {}  # weight files mapped while folding
        self.rules = {op: rule for rule in rules for op in rule.op_types}
        self.forward_rules = {op: rule for rule in forward_rules for op in rule.op_types}
        self.ranks = _Ranks(model)
        self.decisions: dict[tuple[str, str], BNDecision] = {}
        self.released = _Released()
        self.names: NameAllocator | None = None

    # RuleContext
    def rank(self, scope: Scope, name: str) -> int | None:
        return self.ranks.rank(scope, name)

    def shape(self, scope: Scope, name: str) -> Shape | None:
        return self.ranks.shape(scope, name)

    def run(self) -> FoldReport:
        try:
            return self._run()
        finally:
            close_maps(self.maps)

    def _run(self) -> FoldReport:
        nodes_before = count_nodes(self.model)
        changed = False
        position: dict[tuple[str, str], tuple[int, int]] = {}
        for _ in range(MAX_PASSES):
            index = ModelIndex(self.model, self.base_dir, self.held, self.maps)
            if self.names is None:
                self.names = NameAllocator(index.all_names())
                position = _positions(index)
            folded = self._pass(index)
            changed = changed or folded
            if not folded:
                break
        if changed:
            self._cleanup()
        # graph order (a Mul folded in a later pass is listed where it stood)
        last = (len(position), 0)
        ordered = sorted(self.decisions.items(), key=lambda kv: position.get(kv[0], last))
        return FoldReport(
            decisions=tuple(decision for _, decision in ordered),
            nodes_before=nodes_before,
            nodes_after=count_nodes(self.model) if changed else nodes_before,
        )

    # -- one pass -------------------------------------------------------------------------------

    def _pass(self, index: ModelIndex) -> bool:
        pending = _Pending()
        dirty: set[int] = set()
        folded_any = False
        for scope in index.scopes:
            for node in scope.nodes:
                key = (scope.path, node.output[0] if node.output else node.name)
                try:
                    if is_op(node, "BatchNormalization"):
                        decision: BNDecision | None = self._consider(scope, node, dirty, pending)
                    elif is_op(node, "Mul") or is_op(node, "Add"):
                        decision = self._consider_scale(scope, node, dirty, pending)
                    else:
                        continue
                except Defer:
                    continue
                if decision is None:
                    continue
                self.decisions[key] = decision
                folded_any = folded_any or decision.folded
        self._apply_structure(index, pending)
        return folded_any

    def _consider_scale(
        self, scope: Scope, node: onnx.NodeProto, dirty: set[int], pending: _Pending
    ) -> BNDecision | None:
        """A Mul or Add by a per-channel constant right after a layer folds like a BN does.

        Returns None for a Mul/Add that is not such a scale layer (no constant side, or not after
        a layer bnfold folds into), so the report lists only real candidates.
        """
        if len(node.input) != 2 or len(node.output) != 1:
            return None
        const, x = split_constant(scope, node)
        if const is None or x is None:
            return None
        if node.op_type == "Add" and _feeds_batchnorm(scope, node):
            return None  # the BatchNormalization after it folds it in, with its own decision
        producer = _layer_before(scope, x)
        if producer is None or producer.op_type not in self.rules:
            return None
        chain: Chain | None = None

        def decision(reason: Reason, message: str) -> BNDecision:
            return BNDecision(
                node=node.name,
                output=node.output[0],
                graph=scope.path,
                status="folded" if reason is Reason.FOLDED else "skipped",
                reason=reason.value,
                message=message,
                producer=producer.op_type,
                producer_node=producer.name or producer.output[0],
                through=tuple(n.op_type for n in reversed(chain.through)) if chain else (),
                op=node.op_type,
                input=x,
            )

        try:
            chain = walk_chain(scope, node, tuple(self.rules), _is_dirty(dirty), start=x)
            if id(node) in dirty:
                raise Defer
            rule = self.rules[chain.producer.op_type]
            channels, rank = rule.output_channels(self, scope, chain.producer)
            scale = read_scale(scope, node, const, x, channels, rank)
            plan = rule.plan(self, scope, scale, chain)
        except Skip as skip:
            if producer.op_type == "MatMul":
                return None  # MatMul + bias Add is everywhere in transformers: not a scale layer
            return decision(skip.reason, skip.message)
        self._apply(scope, node, chain, plan, pending, params=scale.params)
        dirty.update(id(n) for n in (node, chain.producer, *chain.through))
        target = chain.producer.name or chain.producer.output[0]
        verb = "scale" if node.op_type == "Mul" else "shift"
        return decision(
            Reason.FOLDED, f"per-channel {verb} folded into {chain.producer.op_type} '{target}'"
        )

    def _consider(
        self, scope: Scope, bn_node: onnx.NodeProto, dirty: set[int], pending: _Pending
    ) -> BNDecision:
        chain: Chain | None = None

        def decision(reason: Reason, message: str) -> BNDecision:
            return BNDecision(
                node=bn_node.name,
                output=bn_node.output[0] if bn_node.output else "",
                graph=scope.path,
                status="folded" if reason is Reason.FOLDED else "skipped",
                reason=reason.value,
                message=message,
                producer=chain.producer.op_type if chain else None,
                producer_node=(chain.producer.name or chain.producer.output[0]) if chain else None,
                through=tuple(n.op_type for n in reversed(chain.through)) if chain else (),
            )

        try:
            check_mode(scope, bn_node)
            chain = walk_chain(scope, bn_node, tuple(self.rules), _is_dirty(dirty))
            if id(bn_node) in dirty:
                raise Defer
            bn = read_batchnorm(scope, bn_node)
            rule = self.rules[chain.producer.op_type]
            plan = rule.plan(self, scope, bn, chain)
        except Skip as skip:
            if skip.reason not in _BN_ITSELF:
                forward = self._fold_forward(scope, bn_node, dirty, pending)
                if isinstance(forward, str):
                    return decision(Reason.FOLDED, forward)
                if forward is not None:
                    skip = Skip(
                        forward.reason,
                        f"{forward.message} (and not into the layer before it: {skip.message})",
                    )
            if skip.reason in (Reason.UNKNOWN_RANK, Reason.UNKNOWN_SHAPE) and self.ranks.failure:
                return decision(
                    skip.reason, f"{skip.message} (shape inference failed: {self.ranks.failure})"
                )
            return decision(skip.reason, skip.message)
        self._apply(scope, bn_node, chain, plan, pending)
        dirty.update(id(n) for n in (bn_node, chain.producer, *chain.through))
        via = (
            " through " + " and ".join(n.op_type for n in reversed(chain.through))
            if chain.through
            else ""
        )
        target = chain.producer.name or chain.producer.output[0]
        verb = (
            f"folded into Gemm '{target}' (was MatMul)"
            if plan.op_type
            else (f"folded into {chain.producer.op_type} '{target}'")
        )
        return decision(Reason.FOLDED, f"{verb}{via}")

    def _fold_forward(
        self, scope: Scope, bn_node: onnx.NodeProto, dirty: set[int], pending: _Pending
    ) -> str | Skip | None:
        """Fold the BN into the Conv/Gemm after it: the message when folded, the Skip when that
        layer cannot take it, None when no such layer follows."""
        following = find_following(scope, bn_node, tuple(self.forward_rules))
        if following is None:
            return None
        touched = (bn_node, following.consumer, following.flatten)
        if any(n is not None and id(n) in dirty for n in touched):
            raise Defer
        consumer = following.consumer
        try:
            bn = read_batchnorm(scope, bn_node)
            rule = self.forward_rules[consumer.op_type]
            plan = rule.plan_forward(self, scope, bn, following)
        except Skip as skip:
            return skip
        self._rewrite(scope, consumer, plan, pending)
        for const in bn.params:
            self.released.constants[(const.scope.path, const.name)] = None
        self.released.values[(scope.path, bn_node.output[0])] = None
        (following.flatten or consumer).input[0] = bn.x
        pending.deletes.setdefault(scope.path, []).append(bn_node)
        dirty.update(id(n) for n in touched if n is not None)
        via = " through Flatten" if following.flatten is not None else ""
        target = consumer.name or consumer.output[0]
        return f"folded into the {consumer.op_type} '{target}' after it{via}"

    # -- applying a plan -------------------------------------------------------------------------

    def _apply(
        self,
        scope: Scope,
        bn: onnx.NodeProto,
        chain: Chain,
        plan: FoldPlan,
        pending: _Pending,
        params: Sequence[Constant] | None = None,
    ) -> None:
        """Rewrite the producer with the plan and drop ``bn`` (a BN, or a scale Mul/Add whose
        constant is ``params``) and the nodes between them."""
        producer = chain.producer
        self._rewrite(scope, producer, plan, pending)
        for const in chain.adds:
            self.released.constants[(const.scope.path, const.name)] = None
        if params is None:
            params = []
            for name in bn.input[1:5]:
                try:
                    params.append(scope.constant(name))
                except NotConstant:
                    continue
        for const in params:
            self.released.constants[(const.scope.path, const.name)] = None
        for node in chain.through:
            self.released.values[(scope.path, node.input[0])] = None
        self.released.values[(scope.path, producer.output[0])] = None
        producer.output[0] = bn.output[0]
        pending.deletes.setdefault(scope.path, []).extend([*chain.through, bn])

    def _rewrite(
        self, scope: Scope, layer: onnx.NodeProto, plan: FoldPlan, pending: _Pending
    ) -> None:
        """Give ``layer`` the plan's new weights, op type and attributes."""
        for update in plan.updates:
            self._write_input(scope, layer, update, pending)
        release_pages(self.maps)  # the weights it read are folded: let the OS have them back
        if plan.op_type:
            layer.op_type = plan.op_type
        for attr in plan.del_attrs:
            del_attr(layer, attr)
        for attr, value in plan.set_attrs.items():
            set_attr(layer, attr, value)

    def _write_input(
        self, scope: Scope, node: onnx.NodeProto, update: TensorUpdate, pending: _Pending
    ) -> None:
        """Put new values into input ``update.input_index``: in place when only ``node`` reads the
        old constant, otherwise under a new unique name (shared weights are never edited)."""
        assert self.names is not None
        idx = update.input_index
        old = node.input[idx] if idx < len(node.input) else ""
        if old:
            const = scope.constant(old)
            if scope.is_exclusive(const, node):
                if const.tensor is not None and const.node is None and self._holds(scope):
                    self._hold(const.tensor, update)
                elif const.tensor is not None and const.node is None:
                    numerics.store(const.tensor, update.values, update.elem_type)
                else:
                    assert const.node is not None
                    tensor = numerics.make_tensor(old, update.values, update.elem_type)
                    del const.node.attribute[:]
                    const.node.attribute.append(helper.make_attribute("value", tensor))
                return
            self.released.constants[(const.scope.path, old)] = None
        name = self.names.new(_safe_name(update.name_hint) + SUFFIX)
        if self._holds(scope):
            tensor = onnx.TensorProto(name=name)
            self._hold(tensor, update)
        else:
            tensor = numerics.make_tensor(name, update.values, update.elem_type)
        if scope.graph is not None:
            scope.graph.initializer.append(tensor)
        else:
            const_node = helper.make_node("Constant", [], [name], name=name, value=tensor)
            pending.inserts.setdefault(scope.path, []).append((node, const_node))
        while len(node.input) <= idx:
            node.input.append("")
        node.input[idx] = name

    def _holds(self, scope: Scope) -> bool:
        # main-graph initializers only: the writer lays those out one by one
        return self.held is not None and scope.path == "main"

    def _hold(self, tensor: onnx.TensorProto, update: TensorUpdate) -> None:
        assert self.held is not None
        key = str(len(self.held))
        self.held[key] = numerics.storable(update.values, update.elem_type)
        hold(tensor, key, tuple(update.values.shape), update.elem_type)

    def _apply_structure(self, index: ModelIndex, pending: _Pending) -> None:
        for scope in index.scopes:
            deletes = pending.deletes.get(scope.path, [])
            inserts = pending.inserts.get(scope.path, [])
            if not deletes and not inserts:
                continue
            position = {id(n): i for i, n in enumerate(scope.nodes)}
            edits: list[tuple[int, int, onnx.NodeProto | None]] = []
            edits.extend((position[id(n)], 0, None) for n in deletes)
            edits.extend((position[id(before)], 1, new) for before, new in inserts)
            # From the back, so earlier positions stay valid; a delete at i before an insert at i.
            for pos, _, new in sorted(edits, key=lambda e: (-e[0], e[1])):
                if new is None:
                    del scope.container[pos]
                else:
                    scope.container.insert(pos, new)

    # -- cleanup --------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Remove constants and value_info entries that the folds, and only they, made unused."""
        index = ModelIndex(self.model)
        scopes = {s.path: s for s in index.scopes}
        node_deletes: dict[str, set[int]] = {}
        init_deletes: dict[str, list[str]] = {}
        gone_uses: dict[tuple[str, str], int] = {}  # readers removed by this cleanup
        pending = list(self.released.constants)
        while pending:
            path, name = pending.pop()
            scope = scopes.get(path)
            if scope is None or name in scope.output_set:
                continue
            if scope.uses(name) - gone_uses.get((path, name), 0) > 0:
                continue
            producer_idx = scope.producer.get(name)
            if producer_idx is not None:
                node = scope.nodes[producer_idx]
                left = {o: scope.uses(o) - gone_uses.get((path, o), 0) for o in node.output if o}
                if producer_idx in node_deletes.get(path, ()) or not _removable(scope, node, left):
                    continue
                node_deletes.setdefault(path, set()).add(producer_idx)
                # What it read may now be unused too (the shape of a ConstantOfShape, ...).
                for source in node.input:
                    if source and scope.defines(source):
                        gone_uses[(path, source)] = gone_uses.get((path, source), 0) + 1
                        pending.append((path, source))
            elif name in scope.initializers:
                init_deletes.setdefault(path, []).append(name)
        for path, idxs in node_deletes.items():
            for i in sorted(idxs, reverse=True):
                del scopes[path].container[i]
        for path, names in init_deletes.items():
            graph = scopes[path].graph
            assert graph is not None
            gone = set(names)
            for i in reversed(range(len(graph.initializer))):
                if graph.initializer[i].name in gone:
                    del graph.initializer[i]
            # An IR < 4 model lists its initializers as inputs too: drop those entries with them.
            for i in reversed(range(len(graph.input))):
                if graph.input[i].name in gone:
                    del graph.input[i]
        stale: dict[str, set[str]] = {}  # value_info entries of values that no longer exist
        for path, name in self.released.values:
            scope = scopes.get(path)
            if scope is not None and not scope.defines(name) and name not in scope.output_set:
                stale.setdefault(path, set()).add(name)
        for path, stale_names in stale.items():
            graph = scopes[path].graph
            if graph is None:
                continue
            for i in reversed(range(len(graph.value_info))):
                if graph.value_info[i].name in stale_names:
                    del graph.value_info[i]


#: Reasons that are about the BatchNormalization itself: no layer, before or after, can take it.
_BN_ITSELF = frozenset(
    {
        Reason.TRAINING_MODE,
        Reason.EXTRA_OUTPUTS,
        Reason.SPATIAL_MODE,
        Reason.NON_CONSTANT_PARAM,
        Reason.FUNCTION_ATTRIBUTE,
    }
)


def _positions(index: ModelIndex) -> dict[tuple[str, str], tuple[int, int]]:
    """(scope, first output) -> where the node stands in the model as it came in."""
    return {
        (scope.path, node.output[0] if node.output else node.name): (k, i)
        for k, scope in enumerate(index.scopes)
        for i, node in enumerate(scope.nodes)
    }


def _feeds_batchnorm(scope: Scope, node: onnx.NodeProto) -> bool:
    readers = scope.consumer_nodes(node.output[0])
    return len(readers) == 1 and is_op(readers[0], "BatchNormalization")


def _layer_before(scope: Scope, name: str) -> onnx.NodeProto | None:
    """The first node before ``name`` that is not an Identity or a constant Add (no use checks)."""
    for _ in range(64):
        node = scope.producer_of(name)
        if node is None:
            return None
        if is_op(node, "Identity"):
            name = node.input[0]
            continue
        if is_op(node, "Add") and len(node.input) == 2:
            const, other = split_constant(scope, node)
            if const is not None and other is not None:
                name = other
                continue
        return node
    return None


def _removable(scope: Scope, node: onnx.NodeProto, readers_left: dict[str, int]) -> bool:
    """A node that only makes a constant, with no reader left for any output: safe to delete."""
    if not (is_op(node, "Constant") or (node.op_type in EVALUATORS and is_op(node, node.op_type))):
        return False
    return all(readers_left[o] <= 0 and o not in scope.output_set for o in readers_left)


def _is_dirty(dirty: set[int]) -> Callable[[onnx.NodeProto], bool]:
    return lambda node: id(node) in dirty
