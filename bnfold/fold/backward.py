"""The backward fold pass: each BatchNormalization (and per-channel scale Mul/Add) into the
Conv, ConvTranspose, Gemm or MatMul before it.

Within a pass the index is a snapshot; a pattern that touches a node already changed in the pass
is deferred to the next iteration, except the layer a BN or scale layer just folded into: the
snapshot is brought up to date for it (``FoldState.apply``), so the rest of a chain Conv -> BN ->
BN -> Mul ... folds into it in the same pass, one link after the other as before. A BN this pass
cannot fold for a reason that is not about the BN itself is handed, there and then, to
``ForwardFold``, which may fold it into the layer after it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence

from bnfold.fold.decisions import decide
from bnfold.fold.driver import NodeKey, PassResult
from bnfold.fold.forward import ForwardFold
from bnfold.fold.report import BNDecision
from bnfold.fold.rules.batchnorm import check_mode, read_batchnorm, read_scale
from bnfold.fold.rules.chain import Chain, split_constant, walk_chain
from bnfold.fold.rules.plan import FoldPlan
from bnfold.fold.rules.reasons import Defer, Reason, Skip, unreadable_as_skip
from bnfold.fold.state import FoldState, Pending, node_key
from bnfold.model import proto
from bnfold.model.graph import Constant, ModelIndex, Scope
from bnfold.model.nodes import is_op

#: Evaluated constants (bytes) in a pass past which the pass's garbage is collected at its end.
_COLLECT_AFTER = 64 << 20

#: Reasons that are about the BatchNormalization itself: no layer, before or after, can take it.
BN_ITSELF = frozenset(
    {
        Reason.TRAINING_MODE,
        Reason.EXTRA_OUTPUTS,
        Reason.SPATIAL_MODE,
        Reason.NON_CONSTANT_PARAM,
        Reason.FUNCTION_ATTRIBUTE,
    }
)

#: Reasons for which no layer after the BN is tried either: a BN after a quantized activation
#: stays as the quantized model has it (the message says to fold before quantizing).
NOT_FORWARD = BN_ITSELF | {Reason.QUANTIZED_ACTIVATION}


class BackwardFold:
    """The fold pass: into the layer before, else (``forward``) into the layer after."""

    name = "fold"

    def __init__(self, state: FoldState, forward: ForwardFold) -> None:
        self.state = state
        self.forward = forward

    def __call__(self) -> PassResult:
        index = self.state.index()
        self.state.budget.new_pass()
        try:
            return self._run(index)
        finally:
            index.release()
            if self.state.budget.spent > _COLLECT_AFTER:
                # Skips keep tracebacks that keep the frames that read the values: cycles.
                # Free large evaluated values now, not when the collector next runs.
                gc.collect()

    def _run(self, index: ModelIndex) -> PassResult:
        pending = Pending()
        dirty: set[int] = set()
        # layers changed in this pass whose snapshot is up to date (``FoldState.apply``): the
        # next BN or scale layer of a chain folds into them in this pass, nothing else does
        refreshed: set[int] = set()
        decisions: dict[NodeKey, BNDecision] = {}
        for scope in index.scopes:
            for node in scope.nodes:
                try:
                    if is_op(node, "BatchNormalization"):
                        decision: BNDecision | None = self._consider(
                            scope, node, dirty, refreshed, pending
                        )
                    elif is_op(node, "Mul") or is_op(node, "Add"):
                        decision = self._consider_scale(scope, node, dirty, refreshed, pending)
                    else:
                        continue
                except Defer:
                    continue
                if decision is not None:
                    decisions[node_key(scope, node)] = decision
        self.state.apply_structure(index, pending)
        return PassResult(any(d.folded for d in decisions.values()), decisions)

    def _consider(
        self,
        scope: Scope,
        bn_node: proto.NodeProto,
        dirty: set[int],
        refreshed: set[int],
        pending: Pending,
    ) -> BNDecision:
        state = self.state
        chain: Chain | None = None
        try:
            with unreadable_as_skip():
                check_mode(scope, bn_node)
                chain = _walk(scope, bn_node, tuple(state.rules), dirty, refreshed)
                if id(bn_node) in dirty:
                    raise Defer
                bn = read_batchnorm(scope, bn_node)
                rule = state.rules[chain.producer.op_type]
                plan = rule.plan(state, scope, bn, chain)
        except Skip as skip:
            layer = chain.producer if chain else None
            decision = decide(scope, bn_node, skip.reason, skip.message, layer=layer, chain=chain)
            if skip.reason in NOT_FORWARD:
                return decision
            return self.forward.settle(scope, bn_node, decision, skip, dirty, pending)
        _apply(state, scope, bn_node, chain, plan, pending, dirty, refreshed)
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
        if plan.note:
            verb = f"folded {plan.note}"
        return decide(
            scope, bn_node, Reason.FOLDED, f"{verb}{via}", layer=chain.producer, chain=chain
        )

    def _consider_scale(
        self,
        scope: Scope,
        node: proto.NodeProto,
        dirty: set[int],
        refreshed: set[int],
        pending: Pending,
    ) -> BNDecision | None:
        """A Mul or Add by a per-channel constant right after a layer folds like a BN does.

        Returns None for a Mul/Add that is not such a scale layer (no constant side, or not after
        a layer bnfold folds into), so the report lists only real candidates.
        """
        state = self.state
        if len(node.input) != 2 or len(node.output) != 1:
            return None
        const, x = split_constant(scope, node)
        if const is None or x is None:
            return None
        if node.op_type == "Add" and _feeds_batchnorm(scope, node):
            return None  # the BatchNormalization after it folds it in, with its own decision
        producer = _layer_before(scope, x)
        if producer is None or producer.op_type not in state.rules:
            return None
        if not getattr(state.rules[producer.op_type], "scale_layers", True):
            return None
        chain: Chain | None = None
        try:
            with unreadable_as_skip():
                chain = _walk(scope, node, tuple(state.rules), dirty, refreshed, start=x)
                if id(node) in dirty:
                    raise Defer
                rule = state.rules[chain.producer.op_type]
                channels, rank = rule.output_channels(state, scope, chain.producer)
                scale = read_scale(scope, node, const, x, channels, rank)
                plan = rule.plan(state, scope, scale, chain)
        except Skip as skip:
            if producer.op_type == "MatMul":
                return None  # MatMul + bias Add is everywhere in transformers: not a scale layer
            return decide(
                scope, node, skip.reason, skip.message, layer=producer, chain=chain, data_input=x
            )
        _apply(state, scope, node, chain, plan, pending, dirty, refreshed, params=scale.params)
        target = chain.producer.name or chain.producer.output[0]
        verb = "scale" if node.op_type == "Mul" else "shift"
        message = f"per-channel {verb} folded into {chain.producer.op_type} '{target}'"
        return decide(
            scope, node, Reason.FOLDED, message, layer=producer, chain=chain, data_input=x
        )


def _apply(
    state: FoldState,
    scope: Scope,
    node: proto.NodeProto,
    chain: Chain,
    plan: FoldPlan,
    pending: Pending,
    dirty: set[int],
    refreshed: set[int],
    params: Sequence[Constant] | None = None,
) -> None:
    """Apply a plan for ``node`` (a BN or scale Mul/Add) and every branch in it, however deep (a
    Concat's layers, the DequantizeLinear of a layer's weight), and mark what changed (and, in
    ``refreshed``, a layer the snapshot was brought up to date for: see ``FoldState.apply``)."""
    if state.apply(scope, node, chain, plan, pending, params=params):
        refreshed.add(id(chain.producer))
    dirty.update(id(n) for n in (node, chain.producer, *chain.through))
    for branch, branch_plan in _branches(plan):
        _apply_branch(state, scope, branch, branch_plan, pending)
        dirty.update(id(n) for n in (branch.producer, *branch.through))


def _branches(plan: FoldPlan) -> Iterator[tuple[Chain, FoldPlan]]:
    """The plan's branches, each followed by its own, depth first."""
    for branch, branch_plan in plan.branches:
        yield branch, branch_plan
        yield from _branches(branch_plan)


def _apply_branch(
    state: FoldState, scope: Scope, branch: Chain, plan: FoldPlan, pending: Pending
) -> None:
    """Rewrite one layer feeding a Concat with its plan (or the DequantizeLinear of a layer's
    weight, or the private copy of it the plan asks for); the Identity/Add nodes between it and
    the Concat go, and the layer writes the value the Concat reads."""
    layer = branch.producer
    if plan.private_for is not None:
        state.rewrite_copy(scope, layer, plan.private_for, plan, pending)
        return
    state.rewrite(scope, layer, plan, pending)
    if plan.add_after is not None:
        state.add_after(scope, layer, plan.add_after, pending)
    for const in branch.adds:
        state.released.constants[(const.scope.path, const.name)] = None
    if not branch.through:
        return
    for node in branch.through:
        state.released.values[(scope.path, node.input[0])] = None
    state.released.values[(scope.path, layer.output[0])] = None
    layer.output[0] = branch.through[0].output[0]
    pending.deletes.setdefault(scope.path, []).extend(branch.through)


def _feeds_batchnorm(scope: Scope, node: proto.NodeProto) -> bool:
    readers = scope.consumer_nodes(node.output[0])
    return len(readers) == 1 and is_op(readers[0], "BatchNormalization")


def _layer_before(scope: Scope, name: str) -> proto.NodeProto | None:
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


def _walk(
    scope: Scope,
    node: proto.NodeProto,
    producer_ops: tuple[str, ...],
    dirty: set[int],
    refreshed: set[int],
    start: str | None = None,
) -> Chain:
    """``walk_chain`` from ``node``, which may end at a layer changed in this pass when the
    snapshot is up to date for it (``refreshed``: a chain of BN/scale layers folds in one pass);
    a rule that walks on from the producer (a Concat's, into its inputs) sees every change."""

    def stale(found: proto.NodeProto) -> bool:
        return id(found) in dirty and id(found) not in refreshed

    chain = walk_chain(scope, node, producer_ops, stale, start=start)
    chain.is_dirty = _is_dirty(dirty)
    return chain


def _is_dirty(dirty: set[int]) -> Callable[[proto.NodeProto], bool]:
    return lambda node: id(node) in dirty
