"""The rule protocols and the bases rules are written on: ``LayerBeforeRule`` (a BN into the
layer before it), ``IntoLayersRule`` (into the layers behind a Concat or Reshape),
``LayerAfterRule`` (into the layer after it), and ``rules_by_op`` (one rule per op type)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from bnfold.fold.rules import dequantized
from bnfold.fold.rules.batchnorm import F64, BatchNorm, check_channels, check_dtypes
from bnfold.fold.rules.chain import Chain, added_bias, optional_weight, weight
from bnfold.fold.rules.dequantized import Dequantized
from bnfold.fold.rules.following import Following, flattened_spatial
from bnfold.fold.rules.plan import FoldPlan, RuleContext, TensorUpdate, Weight
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded, rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.numerics import arith as numerics


class FoldRule(Protocol):
    """One producer type: checks the pattern and computes the folded tensors."""

    @property
    def op_types(self) -> tuple[str, ...]: ...

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan: ...

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        """(channels, rank) of the producer's output, or Skip: what a Mul/Add must fit."""
        ...


class ForwardRule(Protocol):
    """One consumer type: folds a BatchNormalization into the layer after it."""

    @property
    def op_types(self) -> tuple[str, ...]: ...

    def plan_forward(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> FoldPlan: ...


class LayerBeforeRule:
    """Conv, ConvTranspose, Gemm and MatMul fold alike: the layer's weight (input 1) is scaled
    along the axis that holds its output channels, and its bias (input 2, created when absent)
    becomes s * (b - mean) + beta. A subclass says only what differs, through the hooks:

    - ``check_layer``: refusals about the layer itself (attributes from a function, rank);
    - ``layout``: (channels, rank of the output) from the weight's shape;
    - ``scale_weight``: the weight scaled per output channel (the channel axis, groups);
    - ``channel_axis``: the one axis of the weight its output channels are on, for a weight
      made by a DequantizeLinear, whose scale takes the fold (``rules/dequantized.py``);
    - ``layer_bias``: the bias the layer already adds (a Conv's b, a Gemm's beta * C);
    - ``finish``: the plan's op type and attribute changes (MatMul becomes Gemm).

    Every check runs before the weight is scaled: a refusal costs no arithmetic on weights.
    """

    op_types: tuple[str, ...] = ()
    weight_label = "weight"
    bias_label = "bias"
    bias_suffix = "_bias"

    def check_layer(self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto) -> None:
        """Skip for what makes the layer unfoldable whatever its weights (default: nothing)."""

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Weight, after: str
    ) -> tuple[int, int]:
        """(output channels, output rank) of the layer, or Skip when its weight does not fit;
        ``after`` is the value the BN or scale layer reads (the layer's output, or what an Add
        after it makes)."""
        raise NotImplementedError

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        """The weight with each output channel c scaled by s[c], rounded into its dtype."""
        raise NotImplementedError

    def channel_axis(self, layer: proto.NodeProto, shape: tuple[int, ...]) -> int | None:
        """The axis of the weight (of ``shape``) whose index is the output channel; None when
        the output channels span several axes (a grouped ConvTranspose)."""
        raise NotImplementedError

    def weight(self, scope: Scope, layer: proto.NodeProto) -> Constant | Dequantized:
        """The layer's weight: a constant, or made by a DequantizeLinear; else Skip."""
        found = dequantized.find(scope, layer, 1, self.weight_label)
        return found if found is not None else weight(scope, layer, 1, self.weight_label)

    def layer_bias(
        self, scope: Scope, layer: proto.NodeProto, channels: int
    ) -> tuple[F64 | None, Constant | None]:
        """(what the layer adds per channel as float64, the constant it comes from); Skip when it
        does not fit. Default: an optional [C] bias at input 2."""
        b = optional_weight(scope, layer, 2, self.bias_label)
        if b is None:
            return None, None
        if b.shape != (channels,):
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"{describe(layer)} {self.bias_label} has shape {list(b.shape)}",
            )
        return numerics.to_float64_array(b.array()), b

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        """Attribute and op-type changes the fold needs (default: none)."""
        return plan

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        """(channels, rank) of the producer's output, or Skip: what a Mul/Add must fit."""
        self.check_layer(ctx, scope, producer)
        w = self.weight(scope, producer)
        return self.layout(ctx, scope, producer, w, producer.output[0])

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        layer = chain.producer
        self.check_layer(ctx, scope, layer)
        w = self.weight(scope, layer)
        check_dtypes(scope, bn, w.elem_type)
        channels, rank = self.layout(ctx, scope, layer, w, bn.x)
        check_channels(bn, channels, layer)
        bias = added_bias(chain, rank, channels)
        existing, b = self.layer_bias(scope, layer, channels)
        if existing is not None:
            bias = existing + bias
        if isinstance(w, Dequantized):
            scaled = w.scaled(self.channel_axis(layer, w.shape), bn.s, chain.is_dirty)
        else:
            new_w = self.scale_weight(layer, w, bn.s)
        new_b = rounded(
            numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), w.elem_type, self.bias_label
        )
        hint = b.name if b is not None else f"{layer.name or w.name}{self.bias_suffix}"
        bias_update = TensorUpdate(2, new_b, w.elem_type, hint)
        if not isinstance(w, Dequantized):
            return self.finish(
                scope, FoldPlan([TensorUpdate(1, new_w, w.elem_type, w.name), bias_update])
            )
        plan = self.finish(scope, FoldPlan([bias_update], branches=[(Chain(w.node), scaled)]))
        name = f"'{layer.name or bn.y}'"
        target = f"Gemm {name} (was MatMul)" if plan.op_type else f"{layer.op_type} {name}"
        return replace(plan, note=w.note(target))


class IntoLayersRule:
    """The base of rules that fold a BN into the layers behind another node (a Concat's inputs,
    the layer before a Reshape/Transpose): they hold the layer rules they hand each part to,
    and a Mul/Add after such a node is not a scale layer they fold (bnfold never has)."""

    op_types: tuple[str, ...] = ()
    scale_layers = False
    #: how the scale-layer refusal ends: "... is not folded <scale_refusal>"
    scale_refusal = ""

    def __init__(self, layers: Sequence[FoldRule]) -> None:
        self.layers: dict[str, FoldRule] = rules_by_op(layers)

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        raise Skip(
            Reason.UNSUPPORTED_PRODUCER,
            f"a scale layer after {describe(producer)} is not folded {self.scale_refusal}",
        )


class LayerAfterRule:
    """Conv, Gemm and MatMul take a BatchNormalization BEFORE them alike: BN(x) = s * x + t per
    channel, so the layer's weight (input 1) is scaled along the axis that reads BN's channels and
    its bias (input 2, created when absent) gains W applied to t. A subclass says what differs:

    - ``check_layer``: refusals about the layer itself (padding, transA, the input's rank);
    - ``spread``: (s, t) laid out to broadcast against the weight, or Skip when the channel
      counts do not fit (``spatial`` columns per channel after a Flatten);
    - ``shifted_bias``: the layer's bias after the fold, as float64;
    - ``finish``: the plan's op type and attribute changes (MatMul becomes Gemm).

    Every check runs before the weight is scaled, as in ``LayerBeforeRule``.
    """

    op_types: tuple[str, ...] = ()
    weight_label = "B"
    bias_label = "C"
    bias_suffix = "_C"
    has_bias = True

    def check_layer(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> None:
        """Skip for what makes the layer after unfit whatever its weights (default: nothing)."""

    def spread(
        self,
        layer: proto.NodeProto,
        w: Constant,
        b: Constant | None,
        bn: BatchNorm,
        spatial: int,
    ) -> tuple[F64, F64]:
        """(s, t) shaped to multiply the weight along the axis that reads BN's channels."""
        raise NotImplementedError

    def shifted_bias(self, layer: proto.NodeProto, w: Constant, b: Constant | None, t: F64) -> F64:
        """The layer's bias after the fold: its own plus what W makes of the shift t."""
        raise NotImplementedError

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        """Attribute and op-type changes the fold needs (default: none)."""
        return plan

    def plan_forward(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> FoldPlan:
        layer = following.consumer
        self.check_layer(ctx, scope, bn, following)
        spatial = flattened_spatial(ctx, scope, bn, following)
        dq = dequantized.dequantized_input(scope, layer, 1)
        if dq is not None:
            raise Skip(
                Reason.QUANTIZED_WEIGHT,
                f"the {describe(layer)} after it has its {self.weight_label} made by "
                f"{describe(dq)}: scaling the layer's input channels would need a scale per "
                "element; a quantized layer takes only the BatchNormalization after it",
            )
        w = weight(scope, layer, 1, self.weight_label)
        b = optional_weight(scope, layer, 2, self.bias_label) if self.has_bias else None
        check_dtypes(scope, bn, w.elem_type)
        s, t = self.spread(layer, w, b, bn, spatial)
        new_w = rounded_scaled(w.array(), s, w.elem_type, self.weight_label)
        new_b = rounded(self.shifted_bias(layer, w, b, t), w.elem_type, self.bias_label)
        hint = b.name if b is not None else f"{layer.name or w.name}{self.bias_suffix}"
        return self.finish(
            scope,
            FoldPlan(
                [
                    TensorUpdate(1, new_w, w.elem_type, w.name),
                    TensorUpdate(2, new_b, w.elem_type, hint),
                ]
            ),
        )


def rules_by_op(rules: Sequence[FoldRule] | Sequence[ForwardRule]) -> dict[str, Any]:
    """{op type: rule} for an ordered tuple of rules; two rules claiming one op type is an error,
    not a silent replacement of the first by the second."""
    found: dict[str, Any] = {}
    for rule in rules:
        for op in rule.op_types:
            if op in found:
                raise ValueError(
                    f"rules {type(found[op]).__name__} and {type(rule).__name__} both fold "
                    f"into {op}: give each op type one rule"
                )
            found[op] = rule
    return found
