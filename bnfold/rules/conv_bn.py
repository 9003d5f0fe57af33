"""Conv -> BatchNormalization: scale output channel c of W (axis 0) by s[c], any rank and group.

W is [C_out, C_in/group, k...] whatever the group count (depthwise included), so the output
channel is always axis 0. A missing bias is created; an existing one becomes s * (b - mean) + beta
(not b + t: ncnn once folded depthwise biases that way, and it is wrong).
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
    optional_weight,
    rounded,
    rounded_scaled,
    weight,
)


class ConvBN:
    op_types: tuple[str, ...] = ("Conv",)

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        conv = chain.producer
        w = weight(scope, conv, 1, "weight")
        b = optional_weight(scope, conv, 2, "bias")
        check_dtypes(scope, bn, w.elem_type)
        if len(w.shape) < 3:
            raise Skip(
                Reason.SHAPE_MISMATCH, f"{describe(conv)} has a weight of rank {len(w.shape)}"
            )
        channels = w.shape[0]
        check_channels(bn, channels, conv)
        rank = len(w.shape)
        bias = added_bias(chain, rank, channels)
        if b is not None:
            if b.shape != (channels,):
                raise Skip(
                    Reason.SHAPE_MISMATCH, f"{describe(conv)} bias has shape {list(b.shape)}"
                )
            bias = bias + numerics.to_float64_array(b.array())
        scale = bn.s.reshape((channels,) + (1,) * (rank - 1))
        new_w = rounded_scaled(w.array(), scale, w.elem_type, "weight")
        new_b = rounded(numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), w.elem_type, "bias")
        return FoldPlan(
            [
                TensorUpdate(1, new_w, w.elem_type, w.name),
                TensorUpdate(2, new_b, w.elem_type, b.name if b else f"{conv.name or w.name}_bias"),
            ]
        )

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: onnx.NodeProto
    ) -> tuple[int, int]:
        w = weight(scope, producer, 1, "weight")
        if len(w.shape) < 3:
            raise Skip(
                Reason.SHAPE_MISMATCH, f"{describe(producer)} has a weight of rank {len(w.shape)}"
            )
        return w.shape[0], len(w.shape)


RULE = ConvBN()
