"""ConvTranspose -> BatchNormalization: W is [C_in, C_out/group, k...].

Output channel c = g * (C_out/group) + j lives on axis 1 *inside* group g, so the scale is applied
to W viewed as [group, C_in/group, C_out/group, k...]. Assuming C_out on axis 0 (as one
onnxoptimizer patch did) is wrong for every ConvTranspose.
"""

from __future__ import annotations

from bnfold.fold.rules.base import LayerBeforeRule
from bnfold.fold.rules.plan import RuleContext, Weight
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class ConvTransposeBN(LayerBeforeRule):
    op_types = ("ConvTranspose",)

    def check_layer(self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto) -> None:
        if attr_is_reference(layer, ("group",)):
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"{describe(layer)} takes its group from the function's attributes",
            )

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Weight, after: str
    ) -> tuple[int, int]:
        group = int(get_attr(layer, "group", 1))
        shape = w.shape
        if len(shape) < 3 or group < 1 or shape[0] % group:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"{describe(layer)} weight shape {list(shape)} does not fit group={group}",
            )
        return group * shape[1], len(shape)

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        group = int(get_attr(layer, "group", 1))
        shape = w.shape
        per_group = shape[1]
        grouped = w.array().reshape((group, shape[0] // group, per_group, *shape[2:]))
        scale = s.reshape((group, 1, per_group) + (1,) * (len(shape) - 2))
        return rounded_scaled(grouped, scale, w.elem_type, "weight").reshape(shape)

    def channel_axis(self, layer: proto.NodeProto, shape: tuple[int, ...]) -> int | None:
        return 1 if int(get_attr(layer, "group", 1)) == 1 else None


RULE = ConvTransposeBN()
