"""BatchNormalization -> Gemm (also BN -> Flatten/Reshape -> Gemm, LeNet-like heads): fold the
normalization into the Gemm AFTER it. With A = s * x + t per column k of A and
Y = alpha * A @ B' + beta * C:

    B'' = diag(s) @ B'    C'' = beta * C + alpha * (t @ B')    (and beta becomes 1)

Through a Flatten of [N, C, H, W] each channel c is the HW columns c*HW + k (NCHW order), so s and
t are repeated HW times. transA=1 makes BN's channels Gemm's rows, not its inner dimension:
skipped.
"""

from __future__ import annotations

import numpy as np

from bnfold.fold.rules.base import LayerAfterRule
from bnfold.fold.rules.batchnorm import BatchNorm
from bnfold.fold.rules.following import Following, per_column
from bnfold.fold.rules.plan import FoldPlan, RuleContext
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class BNIntoGemm(LayerAfterRule):
    op_types = ("Gemm",)

    def check_layer(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> None:
        gemm = following.consumer
        ref = attr_is_reference(gemm, ("alpha", "beta", "transA", "transB"))
        if ref:
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"the {describe(gemm)} after it takes '{ref}' from the function's attributes",
            )
        if int(get_attr(gemm, "transA", 0)):
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"the {describe(gemm)} after it has transA=1: BN's channels are its rows, "
                "not the dimension it sums over",
            )

    def spread(
        self,
        layer: proto.NodeProto,
        w: Constant,
        b: Constant | None,
        bn: BatchNorm,
        spatial: int,
    ) -> tuple[F64, F64]:
        if len(w.shape) != 2:
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(layer)} B has shape {list(w.shape)}")
        trans_b = int(get_attr(layer, "transB", 0))
        s, t = per_column(bn, spatial, layer, w.shape[1] if trans_b else w.shape[0])
        return (s[None, :] if trans_b else s[:, None]), t

    def shifted_bias(self, layer: proto.NodeProto, w: Constant, b: Constant | None, t: F64) -> F64:
        trans_b = int(get_attr(layer, "transB", 0))
        columns = w.shape[0] if trans_b else w.shape[1]
        b64 = numerics.to_float64_array(w.array())
        alpha = float(np.float32(get_attr(layer, "alpha", 1.0)))
        beta = float(np.float32(get_attr(layer, "beta", 1.0)))
        with np.errstate(over="ignore", invalid="ignore"):
            bias: F64 = alpha * (t @ (b64.T if trans_b else b64))
            if b is not None:
                if len(b.shape) > 2 or (b.shape and b.shape[-1] not in (1, columns)):
                    raise Skip(
                        Reason.SHAPE_MISMATCH, f"{describe(layer)} C has shape {list(b.shape)}"
                    )
                bias = beta * numerics.to_float64_array(b.array()) + bias
        return bias

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        plan.set_attrs.update({"broadcast": 1} if scope.opset <= 6 else {})
        plan.del_attrs = ("beta",)
        return plan


RULE = BNIntoGemm()
