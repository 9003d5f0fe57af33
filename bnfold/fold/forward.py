"""Folding forward: a BatchNormalization that nothing before it can take goes into the unpadded
Conv, the Gemm or the 2-D MatMul after it (also through a Flatten/Reshape to [N, C*HW]).

The backward pass calls ``settle`` at the BN's place in its walk, with the same snapshot and
the same set of nodes changed so far: a fold forward then claims the layer after the BN before
a later BN folds backward into that layer, as bnfold has always done. (As a pass of its own,
after the backward pass, the two scalings of a BN -> Conv -> BN layer would be rounded in the
other order: the same model to within rounding, but not the same bytes.)
"""

from __future__ import annotations

from dataclasses import replace

from bnfold.fold.report import BNDecision
from bnfold.fold.rules.batchnorm import read_batchnorm
from bnfold.fold.rules.following import blocked_flatten, find_following
from bnfold.fold.rules.reasons import Defer, Reason, Skip, unreadable_as_skip
from bnfold.fold.state import FoldState, Pending
from bnfold.model import proto
from bnfold.model.graph import Scope


class ForwardFold:
    """Settles, at its place in the backward pass's walk, each BN that pass cannot fold."""

    def __init__(self, state: FoldState) -> None:
        self.state = state

    def settle(
        self,
        scope: Scope,
        node: proto.NodeProto,
        before: BNDecision,
        skip: Skip,
        dirty: set[int],
        pending: Pending,
    ) -> BNDecision:
        """The final decision about ``node`` given the backward pass's ``before``/``skip``;
        raises Defer when the layer after it was already changed in this pass."""
        forward = self._fold_forward(scope, node, dirty, pending)
        if isinstance(forward, str):
            return replace(before, status="folded", reason=Reason.FOLDED.value, message=forward)
        if forward is not None:
            skip = Skip(
                forward.reason,
                f"{forward.message} (and not into the layer before it: {skip.message})",
            )
        message = skip.message
        blocked = (
            blocked_flatten(scope, node, tuple(self.state.forward_rules))
            if forward is None
            else None
        )
        if blocked:
            message = f"{message} ({blocked})"
        failure = self.state.shapes.failure
        if skip.reason in (Reason.UNKNOWN_RANK, Reason.UNKNOWN_SHAPE) and failure:
            message = f"{message} (shape inference failed: {failure})"
        return replace(before, reason=skip.reason.value, message=message)

    def _fold_forward(
        self, scope: Scope, bn_node: proto.NodeProto, dirty: set[int], pending: Pending
    ) -> str | Skip | None:
        """Fold the BN into the Conv/Gemm after it: the message when folded, the Skip when that
        layer cannot take it, None when no such layer follows."""
        state = self.state
        following = find_following(scope, bn_node, tuple(state.forward_rules))
        if following is None:
            return None
        touched = (bn_node, following.consumer, following.flatten, *following.shape_readers)
        if any(n is not None and id(n) in dirty for n in touched):
            raise Defer
        consumer = following.consumer
        try:
            with unreadable_as_skip():
                bn = read_batchnorm(scope, bn_node)
                rule = state.forward_rules[consumer.op_type]
                plan = rule.plan_forward(state, scope, bn, following)
        except Skip as skip:
            return skip
        op = consumer.op_type  # before the rewrite: a MatMul becomes a Gemm
        state.rewrite(scope, consumer, plan, pending)
        for const in bn.params:
            state.released.constants[(const.scope.path, const.name)] = None
        state.released.values[(scope.path, bn_node.output[0])] = None
        (following.flatten or consumer).input[0] = bn.x
        for shape_node in following.shape_readers:
            shape_node.input[0] = bn.x
        pending.deletes.setdefault(scope.path, []).append(bn_node)
        dirty.update(id(n) for n in touched if n is not None)
        via = f" through {following.flatten.op_type}" if following.flatten is not None else ""
        target = consumer.name or consumer.output[0]
        was = f" (was {op})" if plan.op_type else ""
        return f"folded into the {consumer.op_type} '{target}'{was} after it{via}"
