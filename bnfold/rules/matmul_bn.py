"""MatMul (constant 2-D B) -> [Add(constant)] -> BatchNormalization, on a 2-D output.

BN normalizes axis 1; that is B's column axis only when the MatMul output is 2-D. On a 3-D output
[batch, seq, features] axis 1 is the sequence axis, which no weight change can express, so the
rank must be known and equal 2. The result is one Gemm: A @ B' + C'.
"""

from __future__ import annotations

import onnx

from bnfold import numerics
from bnfold.graph import Scope
from bnfold.rules._base import (
    BatchNorm,
    Chain,
    FoldPlan,
    Reason,
    RuleContext,
    Skip,
    TensorUpdate,
    added_bias,
    check_channels,
    check_dtypes,
    describe,
    rounded,
    rounded_scaled,
    weight,
)


class MatMulBN:
    op_types: tuple[str, ...] = ("MatMul",)

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        matmul = chain.producer
        b = weight(scope, matmul, 1, "B")
        check_dtypes(scope, bn, b.elem_type)
        if len(b.shape) != 2:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"{describe(matmul)} B has rank {len(b.shape)}; only a 2-D B has one "
                "column per channel",
            )
        _check_rank_2(ctx, scope, matmul, bn.x)
        channels = b.shape[1]
        check_channels(bn, channels, matmul)
        new_b = rounded_scaled(b.array(), bn.s[None, :], b.elem_type, "B")
        bias = added_bias(chain, 2, channels)
        new_c = rounded(numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), b.elem_type, "C")
        set_attrs = {"broadcast": 1} if scope.opset <= 6 else {}
        return FoldPlan(
            [
                TensorUpdate(1, new_b, b.elem_type, b.name),
                TensorUpdate(2, new_c, b.elem_type, f"{matmul.name or b.name}_bias"),
            ],
            op_type="Gemm",
            set_attrs=set_attrs,
        )

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: onnx.NodeProto
    ) -> tuple[int, int]:
        b = weight(scope, producer, 1, "B")
        if len(b.shape) != 2:
            raise Skip(Reason.NOT_PER_CHANNEL, f"{describe(producer)} B has rank {len(b.shape)}")
        _check_rank_2(ctx, scope, producer, producer.output[0])
        return b.shape[1], 2


def _check_rank_2(ctx: RuleContext, scope: Scope, matmul: onnx.NodeProto, after: str) -> None:
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
