"""Gemm -> BatchNormalization: Y = alpha * A' @ B' + beta * C; BN's channel is Y's column.

Column c of B' is B[:, c] (transB=0) or B[c, :] (transB=1); transA does not matter. alpha stays as
it is (exact); beta is folded into the new C, which may be absent, a scalar, [N], [1, N] or [M, N].
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold import numerics
from bnfold.graph import Scope, attr_is_reference, get_attr
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
    optional_weight,
    rounded,
    rounded_scaled,
    weight,
)


class GemmBN:
    op_types: tuple[str, ...] = ("Gemm",)

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        gemm = chain.producer
        ref = attr_is_reference(gemm, ("alpha", "beta", "transA", "transB"))
        if ref:
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"{describe(gemm)} takes '{ref}' from the function's attributes",
            )
        b = weight(scope, gemm, 1, "B")
        c = optional_weight(scope, gemm, 2, "C")
        check_dtypes(scope, bn, b.elem_type)
        if len(b.shape) != 2:
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(gemm)} B has shape {list(b.shape)}")
        trans_b = int(get_attr(gemm, "transB", 0))
        channels = b.shape[0] if trans_b else b.shape[1]
        check_channels(bn, channels, gemm)
        column_scale = bn.s[:, None] if trans_b else bn.s[None, :]
        new_b = rounded_scaled(b.array(), column_scale, b.elem_type, "B")
        bias: numerics.F64 = added_bias(chain, 2, channels)
        if c is not None:
            if len(c.shape) > 2 or (c.shape and c.shape[-1] not in (1, channels)):
                raise Skip(Reason.SHAPE_MISMATCH, f"{describe(gemm)} C has shape {list(c.shape)}")
            beta = float(np.float32(get_attr(gemm, "beta", 1.0)))
            bias = beta * numerics.to_float64_array(c.array()) + bias
        new_c = rounded(numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), b.elem_type, "C")
        set_attrs = {"broadcast": 1} if scope.opset <= 6 else {}
        return FoldPlan(
            [
                TensorUpdate(1, new_b, b.elem_type, b.name),
                TensorUpdate(2, new_c, b.elem_type, c.name if c else f"{gemm.name or b.name}_C"),
            ],
            set_attrs=set_attrs,
            del_attrs=("beta",),
        )

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: onnx.NodeProto
    ) -> tuple[int, int]:
        b = weight(scope, producer, 1, "B")
        if len(b.shape) != 2:
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(producer)} B has shape {list(b.shape)}")
        return (b.shape[0] if int(get_attr(producer, "transB", 0)) else b.shape[1]), 2


RULE = GemmBN()
