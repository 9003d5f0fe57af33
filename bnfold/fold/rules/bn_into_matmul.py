"""BatchNormalization -> MatMul (input normalization of an MLP; also BN -> Flatten/Reshape ->
MatMul): fold the normalization into the MatMul AFTER it, which becomes a Gemm with a bias:

    B'[i, o] = s[c(i)] * B[i, o]    C[o] = sum_i t[c(i)] * B[i, o]    (t = beta - s * mean)

with c(i) = i directly and c(i) = i // HW through a Flatten of [N, C, H, W]. BN normalizes axis 1,
which is the MatMul's contraction (last) axis only for a 2-D input: on [N, L, C] it normalizes L,
and no change of B can express that.
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
    per_column,
    rounded,
    rounded_scaled,
    weight,
)
from bnfold.model.graph import Scope
from bnfold.numerics import arith as numerics


class BNIntoMatMul:
    op_types: tuple[str, ...] = ("MatMul",)

    def plan_forward(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> FoldPlan:
        matmul = following.consumer
        if following.flatten is None:
            _check_rank_2(ctx, scope, bn, following)
        spatial = flattened_spatial(ctx, scope, bn, following)
        b = weight(scope, matmul, 1, "B")
        check_dtypes(scope, bn, b.elem_type)
        if len(b.shape) != 2:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"the {describe(matmul)} after it has a B of shape {list(b.shape)}, not 2-D",
            )
        if bn.channels * spatial != b.shape[0]:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels"
                + (f" of {spatial} columns each" if spatial > 1 else "")
                + f" but the {describe(matmul)} after it sums over {b.shape[0]}",
            )
        s, t = per_column(bn, spatial)
        new_b = rounded_scaled(b.array(), s[:, None], b.elem_type, "B")
        with np.errstate(over="ignore", invalid="ignore"):
            bias = t @ numerics.to_float64_array(b.array())
        new_c = rounded(bias, b.elem_type, "C")
        return FoldPlan(
            [
                TensorUpdate(1, new_b, b.elem_type, b.name),
                TensorUpdate(2, new_c, b.elem_type, f"{matmul.name or b.name}_C"),
            ],
            op_type="Gemm",
            set_attrs={"broadcast": 1} if scope.opset <= 6 else {},
        )


def _check_rank_2(ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following) -> None:
    """Skip unless BN's input is 2-D: only then is its channel axis 1 what the MatMul sums over."""
    matmul = following.consumer
    rank = ctx.rank(scope, bn.x)
    if rank is None:
        raise Skip(
            Reason.UNKNOWN_RANK,
            f"the rank of its input '{bn.x}' is unknown; its channel axis 1 is what the "
            f"{describe(matmul)} after it sums over only for a 2-D input",
        )
    if rank != 2:
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"it normalizes axis 1 of its rank-{rank} input (e.g. L of [N, L, C]), but the "
            f"{describe(matmul)} after it sums over the last axis: not the same channels",
        )


RULE = BNIntoMatMul()
