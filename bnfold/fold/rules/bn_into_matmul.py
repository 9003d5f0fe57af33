"""BatchNormalization -> MatMul (input normalization of an MLP; also BN -> Flatten/Reshape ->
MatMul): fold the normalization into the MatMul AFTER it, which becomes a Gemm with a bias:

    B'[i, o] = s[c(i)] * B[i, o]    C[o] = sum_i t[c(i)] * B[i, o]    (t = beta - s * mean)

with c(i) = i directly and c(i) = i // HW through a Flatten of [N, C, H, W]. BN normalizes axis 1,
which is the MatMul's contraction (last) axis only for a 2-D input: on [N, L, C] it normalizes L,
and no change of B can express that.
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
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class BNIntoMatMul(LayerAfterRule):
    op_types = ("MatMul",)
    has_bias = False  # input 2 of the Gemm it becomes: C, made by the fold

    def check_layer(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> None:
        if following.flatten is None:
            _check_rank_2(ctx, scope, bn, following)

    def spread(
        self,
        layer: proto.NodeProto,
        w: Constant,
        b: Constant | None,
        bn: BatchNorm,
        spatial: int,
    ) -> tuple[F64, F64]:
        if len(w.shape) != 2:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"the {describe(layer)} after it has a B of shape {list(w.shape)}, not 2-D",
            )
        s, t = per_column(bn, spatial, layer, w.shape[0])
        return s[:, None], t

    def shifted_bias(self, layer: proto.NodeProto, w: Constant, b: Constant | None, t: F64) -> F64:
        with np.errstate(over="ignore", invalid="ignore"):
            bias: F64 = t @ numerics.to_float64_array(w.array())
        return bias

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        plan.op_type = "Gemm"
        plan.set_attrs.update({"broadcast": 1} if scope.opset <= 6 else {})
        return plan


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
