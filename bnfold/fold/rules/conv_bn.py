"""Conv -> BatchNormalization: scale output channel c of W (axis 0) by s[c], any rank and group.

W is [C_out, C_in/group, k...] whatever the group count (depthwise included), so the output
channel is always axis 0. A missing bias is created; an existing one becomes s * (b - mean) + beta
(not b + t: ncnn once folded depthwise biases that way, and it is wrong).
"""

from __future__ import annotations

from bnfold.fold.rules.base import LayerBeforeRule
from bnfold.fold.rules.plan import RuleContext, Weight
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class ConvBN(LayerBeforeRule):
    op_types = ("Conv",)

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Weight, after: str
    ) -> tuple[int, int]:
        if len(w.shape) < 3:
            raise Skip(
                Reason.SHAPE_MISMATCH, f"{describe(layer)} has a weight of rank {len(w.shape)}"
            )
        return w.shape[0], len(w.shape)

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        scale = s.reshape((w.shape[0],) + (1,) * (len(w.shape) - 1))
        return rounded_scaled(w.array(), scale, w.elem_type, "weight")

    def channel_axis(self, layer: proto.NodeProto, shape: tuple[int, ...]) -> int | None:
        return 0


RULE = ConvBN()
