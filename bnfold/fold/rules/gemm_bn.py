"""Gemm -> BatchNormalization: Y = alpha * A' @ B' + beta * C; BN's channel is Y's column.

Column c of B' is B[:, c] (transB=0) or B[c, :] (transB=1); transA does not matter. alpha stays as
it is (exact); beta is folded into the new C, which may be absent, a scalar, [N], [1, N] or [M, N].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bnfold.fold.rules.base import LayerBeforeRule
from bnfold.fold.rules.chain import optional_weight
from bnfold.fold.rules.plan import FoldPlan, RuleContext, Weight
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class GemmBN(LayerBeforeRule):
    op_types = ("Gemm",)
    weight_label = "B"
    bias_label = "C"
    bias_suffix = "_C"

    def check_layer(self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto) -> None:
        ref = attr_is_reference(layer, ("alpha", "beta", "transA", "transB"))
        if ref:
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"{describe(layer)} takes '{ref}' from the function's attributes",
            )

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Weight, after: str
    ) -> tuple[int, int]:
        if len(w.shape) != 2:
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(layer)} B has shape {list(w.shape)}")
        return (w.shape[0] if int(get_attr(layer, "transB", 0)) else w.shape[1]), 2

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        column_scale = s[:, None] if int(get_attr(layer, "transB", 0)) else s[None, :]
        return rounded_scaled(w.array(), column_scale, w.elem_type, "B")

    def channel_axis(self, layer: proto.NodeProto, shape: tuple[int, ...]) -> int | None:
        return 0 if int(get_attr(layer, "transB", 0)) else 1

    def layer_bias(
        self, scope: Scope, layer: proto.NodeProto, channels: int
    ) -> tuple[F64 | None, Constant | None]:
        """beta * C, for C absent, a scalar, [N], [1, N] or [M, N]."""
        c = optional_weight(scope, layer, 2, "C")
        if c is None:
            return None, None
        if len(c.shape) > 2 or (c.shape and c.shape[-1] not in (1, channels)):
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(layer)} C has shape {list(c.shape)}")
        beta = float(np.float32(get_attr(layer, "beta", 1.0)))
        scaled: F64 = beta * numerics.to_float64_array(c.array())
        return scaled, c

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        set_attrs = {"broadcast": 1} if scope.opset <= 6 else {}
        return replace(plan, set_attrs=set_attrs, del_attrs=("beta",))


RULE = GemmBN()
