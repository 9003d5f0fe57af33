"""Concat -> BatchNormalization (YOLO's BottleneckCSP: ``bn(cat(cv3(...), cv2(x)))``): the BN
splits by channel slice into the layers the Concat joins.

Concat on the channel axis 1 puts input k's channels at [off_k, off_k + C_k) of the BN's input,
so BN(cat(L_0(u_0), ..., L_n(u_n))) = cat(BN_0(L_0(u_0)), ..., BN_n(L_n(u_n))) with BN_k the
slice of s, mean and beta at those channels; each BN_k folds into L_k by that layer's own rule.
All slices must fold, or nothing changes: a partial fold would leave the other slices
unnormalized. Each input must be a layer bnfold folds into (through Identity / constant Add),
read only by the Concat; the channel counts come from those layers' weights.
"""

from __future__ import annotations

from dataclasses import replace

from bnfold.fold.rules.base import FoldRule, IntoLayersRule
from bnfold.fold.rules.batchnorm import BatchNorm
from bnfold.fold.rules.chain import Chain, added_bias, walk_chain
from bnfold.fold.rules.plan import FoldPlan, RuleContext
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Scope, attr_is_reference, get_attr


class ConcatBN(IntoLayersRule):
    op_types: tuple[str, ...] = ("Concat",)
    scale_refusal = "into its inputs"

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        concat = chain.producer
        if attr_is_reference(concat, ("axis",)):
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"{describe(concat)} takes its axis from the function's attributes",
            )
        found: list[tuple[Chain, FoldRule, int]] = []
        ranks: set[int] = set()
        for k, name in enumerate(concat.input):
            try:
                sub = walk_chain(scope, concat, tuple(self.layers), chain.is_dirty, start=name)
                rule = self.layers[sub.producer.op_type]
                channels, rank = rule.output_channels(ctx, scope, sub.producer)
            except Skip as skip:
                raise _at_input(skip, k, name, concat) from None
            found.append((sub, rule, channels))
            ranks.add(rank)
        if len(ranks) != 1:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"the layers {describe(concat)} joins give outputs of ranks {sorted(ranks)}",
            )
        rank = ranks.pop()
        axis = int(get_attr(concat, "axis", 1))
        if (axis + rank if axis < 0 else axis) != 1:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"{describe(concat)} joins rank-{rank} tensors along axis {axis}, not the "
                "channel axis 1: a BN channel is not one layer's output channel",
            )
        total = sum(channels for _, _, channels in found)
        if total != bn.channels:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels but the layers {describe(concat)} joins "
                f"produce {total}",
            )
        # BN(x + a) = s * (x - (mean - a)) + beta: an Add between Concat and BN moves the mean
        mean = bn.mean - added_bias(chain, rank, total)
        branches: list[tuple[Chain, FoldPlan]] = []
        start = 0
        for k, (sub, rule, channels) in enumerate(found):
            part = slice(start, start + channels)
            start += channels
            piece = replace(
                bn, x=concat.input[k], s=bn.s[part], mean=mean[part], beta=bn.beta[part]
            )
            try:
                branches.append((sub, rule.plan(ctx, scope, piece, sub)))
            except Skip as skip:
                raise _at_input(skip, k, concat.input[k], concat) from None
        layers = ", ".join(
            f"{sub.producer.op_type} '{sub.producer.name or sub.producer.output[0]}'"
            for sub, _ in branches
        )
        note = (
            f"by channel slices into the {len(branches)} layers {describe(concat)} joins ({layers})"
        )
        return FoldPlan([], branches=branches, note=note)


def _at_input(skip: Skip, k: int, name: str, concat: proto.NodeProto) -> Skip:
    """The refusal of one input, said of the whole Concat (nothing is folded then)."""
    return Skip(
        skip.reason,
        f"input {k} '{name}' of the {describe(concat)} before it cannot take its channels, so "
        f"no input does: {skip.message}",
    )
