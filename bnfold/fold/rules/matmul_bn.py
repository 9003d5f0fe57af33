"""MatMul (constant 2-D B) -> [Add(constant)] -> BatchNormalization, on a 2-D output.

BN normalizes axis 1; that is B's column axis only when the MatMul output is 2-D. On a 3-D output
[batch, seq, features] axis 1 is the sequence axis, which no weight change can express, so the
rank must be known and equal 2. The result is one Gemm: A @ B' + C'.
"""

from __future__ import annotations

from dataclasses import replace

from bnfold.fold.rules.base import LayerBeforeRule
from bnfold.fold.rules.plan import FoldPlan, RuleContext, Weight
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


class MatMulBN(LayerBeforeRule):
    op_types = ("MatMul",)
    weight_label = "B"
    bias_label = "C"

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Weight, after: str
    ) -> tuple[int, int]:
        if len(w.shape) != 2:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"{describe(layer)} B has rank {len(w.shape)}; only a 2-D B has one "
                "column per channel",
            )
        _check_rank_2(ctx, scope, layer, after)
        return w.shape[1], 2

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        return rounded_scaled(w.array(), s[None, :], w.elem_type, "B")

    def channel_axis(self, layer: proto.NodeProto, shape: tuple[int, ...]) -> int | None:
        return 1

    def layer_bias(
        self, scope: Scope, layer: proto.NodeProto, channels: int
    ) -> tuple[F64 | None, Constant | None]:
        return None, None  # a MatMul has none: the plan gives the new Gemm its C

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        set_attrs = {"broadcast": 1} if scope.opset <= 6 else {}
        return replace(plan, op_type="Gemm", set_attrs=set_attrs)


def _check_rank_2(ctx: RuleContext, scope: Scope, matmul: proto.NodeProto, after: str) -> None:
    """Skip unless the MatMul's output is 2-D: only then is axis 1 B's column axis."""
    rank = ctx.rank(scope, matmul.output[0]) or ctx.rank(scope, after)
    if rank is None:
        a_rank = ctx.rank(scope, matmul.input[0])
        rank = None if a_rank is None else max(a_rank, 2)
    if rank is None:
        raise Skip(
            Reason.UNKNOWN_RANK,
            f"the rank of {describe(matmul)}'s output is unknown; its channel axis 1 is "
            "B's column axis only for a 2-D output",
        )
    if rank != 2:
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"{describe(matmul)} gives a rank-{rank} output: axis 1 is not the last (B's "
            "column) axis",
        )


RULE = MatMulBN()
