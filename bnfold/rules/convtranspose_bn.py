"""ConvTranspose -> BatchNormalization: W is [C_in, C_out/group, k...].

Output channel c = g * (C_out/group) + j lives on axis 1 *inside* group g, so the scale is applied
to W viewed as [group, C_in/group, C_out/group, k...]. Assuming C_out on axis 0 (as one
onnxoptimizer patch did) is wrong for every ConvTranspose.
"""

from __future__ import annotations

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


class ConvTransposeBN:
    op_types: tuple[str, ...] = ("ConvTranspose",)

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        deconv = chain.producer
        if attr_is_reference(deconv, ("group",)):
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"{describe(deconv)} takes its group from the function's attributes",
            )
        w = weight(scope, deconv, 1, "weight")
        b = optional_weight(scope, deconv, 2, "bias")
        check_dtypes(scope, bn, w.elem_type)
        group = int(get_attr(deconv, "group", 1))
        shape = w.shape
        if len(shape) < 3 or group < 1 or shape[0] % group:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"{describe(deconv)} weight shape {list(shape)} does not fit group={group}",
            )
        per_group = shape[1]
        channels = group * per_group
        check_channels(bn, channels, deconv)
        rank = len(shape)
        bias = added_bias(chain, rank, channels)
        if b is not None:
            if b.shape != (channels,):
                raise Skip(
                    Reason.SHAPE_MISMATCH, f"{describe(deconv)} bias has shape {list(b.shape)}"
                )
            bias = bias + numerics.to_float64_array(b.array())
        grouped = w.array().reshape((group, shape[0] // group, per_group, *shape[2:]))
        scale = bn.s.reshape((group, 1, per_group) + (1,) * (rank - 2))
        new_w = rounded_scaled(grouped, scale, w.elem_type, "weight").reshape(shape)
        new_b = rounded(numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), w.elem_type, "bias")
        return FoldPlan(
            [
                TensorUpdate(1, new_w, w.elem_type, w.name),
                TensorUpdate(
                    2, new_b, w.elem_type, b.name if b else f"{deconv.name or w.name}_bias"
                ),
            ]
        )

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: onnx.NodeProto
    ) -> tuple[int, int]:
        w = weight(scope, producer, 1, "weight")
        group = int(get_attr(producer, "group", 1))
        if len(w.shape) < 3:
            raise Skip(
                Reason.SHAPE_MISMATCH, f"{describe(producer)} has a weight of rank {len(w.shape)}"
            )
        return w.shape[1] * group, len(w.shape)


RULE = ConvTransposeBN()
