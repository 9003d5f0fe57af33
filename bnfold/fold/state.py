"""What the fold passes share: the model, its tensors' whereabouts, and the edits a fold makes.

A pass finds patterns on a ``ModelIndex`` snapshot and changes the producer's tensors right away
(``apply``/``rewrite``); nodes it deletes or inserts are collected in a ``Pending`` and applied
at the end of the pass (``apply_structure``), so the snapshot's positions stay valid meanwhile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bnfold.fold.call_sites import Bound
from bnfold.fold.calls import CallPlan
from bnfold.fold.driver import NodeKey
from bnfold.fold.rules.base import FoldRule, ForwardRule, rules_by_op
from bnfold.fold.rules.chain import Chain
from bnfold.fold.rules.plan import FoldPlan, TensorUpdate
from bnfold.fold.shapes import Shapes
from bnfold.model import proto
from bnfold.model.constfold import Budget
from bnfold.model.graph import Constant, ModelIndex, NotConstant, Scope, Shape
from bnfold.model.names import NameAllocator
from bnfold.model.nodes import del_attr, set_attr
from bnfold.model.store import TensorStore
from bnfold.numerics import arith as numerics

#: Suffix of the names a fold gives the tensors it creates (made unique model-wide).
SUFFIX = "_bnfolded"
#: Element types stored two to a byte.
PACKED = frozenset({proto.TensorProto.INT4, proto.TensorProto.UINT4})


@dataclass
class Pending:
    """Structural edits collected during a pass and applied at its end."""

    deletes: dict[str, list[proto.NodeProto]] = field(default_factory=dict)
    inserts: dict[str, list[tuple[proto.NodeProto, proto.NodeProto]]] = field(default_factory=dict)


@dataclass
class Released:
    """Names a fold stopped using: removed at the end if nothing else reads them."""

    constants: dict[tuple[str, str], None] = field(default_factory=dict)
    values: dict[tuple[str, str], None] = field(default_factory=dict)


def _safe_name(base: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./:-]", "_", base) or "t"


def node_key(scope: Scope, node: proto.NodeProto) -> NodeKey:
    return (scope.path, node.output[0] if node.output else node.name)


class FoldState:
    """One model being folded: the rules, shapes, where its weights are, and new names."""

    def __init__(
        self,
        model: proto.ModelProto,
        rules: Sequence[FoldRule],
        forward_rules: Sequence[ForwardRule],
        *,
        base_dir: str | os.PathLike[str] | None,
        store: TensorStore | None,
    ) -> None:
        self.model = model
        self.base_dir = base_dir
        # With a store, folded main-graph weights stay arrays in it until bnfold writes the file
        # (bnfold.model.writer), instead of being copied into the model first.
        self.store = store
        self.budget = Budget()  # constant evaluation: per pass, and what was too large
        self.rules: dict[str, FoldRule] = rules_by_op(rules)
        self.forward_rules: dict[str, ForwardRule] = rules_by_op(forward_rules)
        self.shapes = Shapes(model, store)
        self.released = Released()
        #: bytes of new tensors a fold wrote in place of computed or shared values (the report's)
        self.materialized_bytes = 0
        self.copied_bytes = 0
        #: calls of model-local functions folded with the constants they pass (``plan_calls``),
        #: and, in the current index, the function bodies bound to them
        self.calls: CallPlan | None = None
        self.bound: dict[str, Bound] = {}
        first = self.index()
        self.names = NameAllocator(first.all_names())
        #: where each node stood in the model as it came in, to report in graph order
        self.positions: dict[NodeKey, tuple[int, int]] = {
            node_key(scope, node): (k, i)
            for k, scope in enumerate(first.scopes)
            for i, node in enumerate(scope.nodes)
        }

    def index(self) -> ModelIndex:
        """A fresh use-def snapshot of the model as it is now (function inputs bound to the
        constants their calls pass, where ``plan_calls`` found such calls)."""
        index = ModelIndex(self.model, self.base_dir, self.store, self.budget)
        self.bound = self.calls.attach(index) if self.calls is not None else {}
        return index

    def plan_calls(self) -> None:
        """Group the calls of the model-local functions that have a BatchNormalization by the
        constants they pass, copying a function per group where they differ (see
        ``bnfold.fold.calls``); the passes then fold each with its constants."""
        if not self.model.functions:
            return
        index = self.index()
        try:
            self.calls = CallPlan.make(self.model, index, self.names, self.positions)
        finally:
            index.release()

    # RuleContext
    def rank(self, scope: Scope, name: str) -> int | None:
        return self.shapes.rank(scope, name)

    def shape(self, scope: Scope, name: str) -> Shape | None:
        return self.shapes.shape(scope, name)

    # -- applying a plan -------------------------------------------------------------------------

    def apply(
        self,
        scope: Scope,
        bn: proto.NodeProto,
        chain: Chain,
        plan: FoldPlan,
        pending: Pending,
        params: Sequence[Constant] | None = None,
    ) -> bool:
        """Rewrite the producer with the plan and drop ``bn`` (a BN, or a scale Mul/Add whose
        constant is ``params``) and the nodes between them.

        Returns True when ``scope``'s snapshot was brought up to date for the producer
        (``Scope.took_over``: a layer rewritten in place), so that the next BN or scale layer
        of a chain may fold into it in this same pass, with the same arithmetic, in the same
        order, as it would in the next one."""
        producer = chain.producer
        position = scope.producer.get(producer.output[0])
        created = self.rewrite(scope, producer, plan, pending)
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
        if position is None or plan.branches or plan.add_after is not None:
            return False
        if scope.function is not None and scope.path in self.bound:
            return False  # its new tensors live beside the calls, passed in: next pass
        scope.took_over(position, bn.output[0], created)
        return True

    def rewrite(
        self,
        scope: Scope,
        layer: proto.NodeProto,
        plan: FoldPlan,
        pending: Pending,
        *,
        fresh: bool = False,
    ) -> list[proto.TensorProto | proto.NodeProto]:
        """Give ``layer`` the plan's new weights, op type and attributes (``fresh``: a node this
        fold made, whose inputs are still read by the node it copies); returns the constants it
        made (for tensors it could not change in place; see ``write_input``)."""
        created: list[proto.TensorProto | proto.NodeProto] = []
        for update in plan.updates:
            tensor = self.write_input(scope, layer, update, pending, fresh=fresh)
            if tensor is not None:
                created.append(tensor)
        if self.store is not None:  # the weights it read are folded: let the OS have them back
            self.store.release_pages()
        if plan.op_type:
            layer.op_type = plan.op_type
        for attr in plan.del_attrs:
            del_attr(layer, attr)
        for attr, value in plan.set_attrs.items():
            set_attr(layer, attr, value)
        return created

    def write_input(
        self,
        scope: Scope,
        node: proto.NodeProto,
        update: TensorUpdate,
        pending: Pending,
        *,
        fresh: bool = False,
    ) -> proto.TensorProto | proto.NodeProto | None:
        """Put new values into input ``update.input_index``: in place when only ``node`` reads the
        old constant, otherwise under a new unique name (shared weights are never edited).
        Returns the constant it made, if any: the new initializer as the graph holds it, or
        the new Constant node of a function body (inserted when the pass ends).

        4-bit integers (a zero point made per channel) always get a new tensor of their own,
        packed two to a byte, outside the store: the store holds arrays byte for byte."""
        idx = update.input_index
        old = node.input[idx] if idx < len(node.input) else ""
        packed = update.elem_type in PACKED
        if old and not fresh:
            const = scope.constant(old)
            exclusive = scope.is_exclusive(const, node) or self._threaded_for(scope, const, node)
            if not packed and exclusive:
                if const.tensor is not None and const.node is None and self.holds(const.scope):
                    self.hold(const.tensor, update)
                elif const.tensor is not None and const.node is None:
                    values = numerics.materialized(update.values)
                    proto.store(const.tensor, values, update.elem_type)
                else:
                    assert const.node is not None
                    values = numerics.materialized(update.values)
                    tensor = proto.make_tensor(old, values, update.elem_type)
                    del const.node.attribute[:]
                    const.node.attribute.append(proto.make_attribute("value", tensor))
                return None
            self.released.constants[(const.scope.path, const.name)] = None
            # a new tensor for a value that was computed (now stored), or shared (now copied)
            if const.computed:
                self.materialized_bytes += update.values.nbytes
            else:
                self.copied_bytes += update.values.nbytes
        name = self.names.new(_safe_name(update.name_hint) + SUFFIX)
        # in a function folded for the constants its calls pass, the new tensor goes beside the
        # calls, which pass it in as a new input
        bound = self.bound.get(scope.path) if scope.function is not None else None
        home = bound.caller if bound is not None else scope
        if self.holds(home) and not packed:
            tensor = proto.TensorProto(name=name)
            self.hold(tensor, update)
        else:
            values = numerics.materialized(update.values)
            tensor = proto.make_tensor(name, values, update.elem_type)
        created: proto.TensorProto | proto.NodeProto
        if home.graph is not None:
            home.graph.initializer.append(tensor)
            created = home.graph.initializer[-1]  # (append copies the message)
        else:
            created = proto.make_node("Constant", [], [name], name=name, value=tensor)
            before = node if bound is None else bound.calls[0]
            pending.inserts.setdefault(home.path, []).append((before, created))
        if bound is not None:
            CallPlan.thread(bound, scope, name)
        while len(node.input) <= idx:
            node.input.append("")
        node.input[idx] = name
        return created

    def _threaded_for(self, scope: Scope, const: Constant, node: proto.NodeProto) -> bool:
        """True when ``const`` is a tensor an earlier fold made beside the calls of this function
        body and passed in (see ``bnfold.fold.calls``), and ``node`` alone reads it there: like
        an exclusive constant, it may change in place."""
        bound = self.bound.get(scope.path) if scope.function is not None else None
        return (
            bound is not None
            and const.name in bound.group.threaded
            and not const.computed
            and scope.uses(const.name) == 1
            and list(node.input).count(const.name) == 1
        )

    def rewrite_copy(
        self,
        scope: Scope,
        node: proto.NodeProto,
        reader: proto.NodeProto,
        plan: FoldPlan,
        pending: Pending,
    ) -> None:
        """Give ``reader`` a copy of ``node`` (which other nodes read too, or which is in a graph
        around ``reader``'s) with the plan applied; ``node`` stays as it is for the others."""
        copy = proto.NodeProto()
        copy.CopyFrom(node)
        out = self.names.new(_safe_name(node.output[0]) + SUFFIX)
        copy.output[0] = out
        copy.name = out
        for i, name in enumerate(reader.input):
            if name == node.output[0]:
                reader.input[i] = out
        where: Scope | None = scope  # the graph it is in: the last copy may leave it unread
        while where is not None and where.producer_of(node.output[0]) is not node:
            where = where.parent
        if where is not None:
            self.released.constants[(where.path, node.output[0])] = None
        inserts = pending.inserts.setdefault(scope.path, [])
        first = len(inserts)
        self.rewrite(scope, copy, plan, pending, fresh=True)
        made = [new for _, new in inserts[first:]]  # Constant nodes, in a function body
        del inserts[first:]
        # inserted at one place in this order, they end up reversed: the Constants, the copy
        inserts.extend([(reader, copy), *((reader, new) for new in made)])

    def add_after(
        self, scope: Scope, layer: proto.NodeProto, update: TensorUpdate, pending: Pending
    ) -> None:
        """Insert ``Add(layer's output, update.values)`` right after ``layer`` (the bias of a
        MatMul that has none). The Add takes over the layer's output name, so every reader and
        value_info entry of that name now sees the biased value; the layer gets a new name."""
        out = layer.output[0]
        layer.output[0] = self.names.new(_safe_name(out) + SUFFIX)
        add = proto.make_node("Add", [layer.output[0], ""], [out], name=layer.output[0])
        after = next(n for n in scope.nodes if out in n.input)  # a reader: the Add goes before it
        inserts = pending.inserts.setdefault(scope.path, [])
        first = len(inserts)
        self.write_input(scope, add, replace(update, input_index=1), pending)
        made = [new for _, new in inserts[first:]]  # a Constant node, in a function body
        del inserts[first:]
        # inserted at one place in this order, they end up reversed: the Constant, then the Add
        inserts.extend([(after, add), *((after, new) for new in made)])

    def holds(self, scope: Scope) -> bool:
        # main-graph initializers only: the writer lays those out one by one
        return self.store is not None and scope.path == "main"

    def hold(self, tensor: proto.TensorProto, update: TensorUpdate) -> None:
        assert self.store is not None
        values = update.values
        if isinstance(values, numerics.LazyScaled):  # computed again, in chunks, when written
            held: numerics.Values = values.with_release(self.store.release_pages)
        else:
            held = proto.storable(values, update.elem_type)
        self.store.hold(tensor, held, update.elem_type)

    def apply_structure(self, index: ModelIndex, pending: Pending) -> None:
        for scope in index.scopes:
            deletes = pending.deletes.get(scope.path, [])
            inserts = pending.inserts.get(scope.path, [])
            if not deletes and not inserts:
                continue
            position = {id(n): i for i, n in enumerate(scope.nodes)}
            edits: list[tuple[int, int, proto.NodeProto | None]] = []
            edits.extend((position[id(n)], 0, None) for n in deletes)
            edits.extend((position[id(before)], 1, new) for before, new in inserts)
            # From the back, so earlier positions stay valid; a delete at i before an insert at i.
            for pos, _, new in sorted(edits, key=lambda e: (-e[0], e[1])):
                if new is None:
                    del scope.container[pos]
                else:
                    scope.container.insert(pos, new)
