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

from bnfold.fold.rules._base import (
    BatchNorm,
    FoldPlan,
    Following,
    Reason,
    RuleContext,
    Skip,
    TensorUpdate,
    check_dtypes,
    describe,
    flattened_spatial,
    optional_weight,
    per_column,
    rounded,
    rounded_scaled,
    weight,
)
from bnfold.model.graph import Scope, attr_is_reference, get_attr
from bnfold.numerics import arith as numerics


class BNIntoGemm:
    op_types: tuple[str, ...] = ("Gemm",)

    def plan_forward(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> FoldPlan:
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
        spatial = flattened_spatial(ctx, scope, bn, following)
        b = weight(scope, gemm, 1, "B")
        c = optional_weight(scope, gemm, 2, "C")
        check_dtypes(scope, bn, b.elem_type)
        if len(b.shape) != 2:
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(gemm)} B has shape {list(b.shape)}")
        trans_b = int(get_attr(gemm, "transB", 0))
        inner, columns = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if bn.channels * spatial != inner:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels"
                + (f" of {spatial} columns each" if spatial > 1 else "")
                + f" but the {describe(gemm)} after it sums over {inner}",
            )
        s, t = per_column(bn, spatial)
        row_scale = s[None, :] if trans_b else s[:, None]
        new_b = rounded_scaled(b.array(), row_scale, b.elem_type, "B")
        b64 = numerics.to_float64_array(b.array())
        alpha = float(np.float32(get_attr(gemm, "alpha", 1.0)))
        beta = float(np.float32(get_attr(gemm, "beta", 1.0)))
        with np.errstate(over="ignore", invalid="ignore"):
            bias = alpha * (t @ (b64.T if trans_b else b64))
            if c is not None:
                if len(c.shape) > 2 or (c.shape and c.shape[-1] not in (1, columns)):
                    raise Skip(
                        Reason.SHAPE_MISMATCH, f"{describe(gemm)} C has shape {list(c.shape)}"
                    )
                bias = beta * numerics.to_float64_array(c.array()) + bias
        new_c = rounded(bias, b.elem_type, "C")
        return FoldPlan(
            [
                TensorUpdate(1, new_b, b.elem_type, b.name),
                TensorUpdate(2, new_c, b.elem_type, c.name if c else f"{gemm.name or b.name}_C"),
            ],
            set_attrs={"broadcast": 1} if scope.opset <= 6 else {},
            del_attrs=("beta",),
        )


RULE = BNIntoGemm()
