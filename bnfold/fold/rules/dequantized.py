"""DequantizeLinear -> Conv/ConvTranspose/Gemm/MatMul -> BatchNormalization: a layer with a
weight-only quantized weight takes the BN in the weight's scale.

The layer's weight is W = (q - zp) * scale, the scale per tensor, per axis or per block. Output
channel c of the folded layer needs s[c] * W[c] = (q - zp) * (scale * s[c]): the integer weight q
and its zero point keep their bytes, and only the scale changes, computed in float64 and rounded
once into its own type. A negative s gives a negative scale (negating q instead would not be
exact: int8 -128 has no negation). The layer rule says on which axis of W its output channels
are (``LayerBeforeRule.channel_axis``); this module does the rest:

- a per-axis scale on that axis, or a blocked one (``block_size``, opset 21) whose blocks run
  along another axis, is multiplied along it;
- a per-tensor scale becomes per-axis on that axis (opset >= 13), its zero point repeated per
  channel: (q - zp) * scale * s[c] is still exact for any zero point;
- where every s[c] is the same, the scale keeps its form, whatever it is;
- a scale per axis on another axis, blocks that span several output channels, a grouped
  ConvTranspose (its output channels span two axes) or a per-tensor scale before opset 13 cannot
  take one factor per channel: ``quantized_weight``;
- a DequantizeLinear that other nodes read too is left as it is: the layer gets its own copy,
  reading the same integer weight and zero point, with the new scale.

Also here: the refusal for a BN after a quantized activation (layer -> QuantizeLinear ->
DequantizeLinear -> BN, what quantize_static makes of an unfolded model). The layer's output is
rounded to the quantization grid before the BN, so no change to the layer's weights can take the
BN exactly: the model has to be folded before it is quantized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnfold.fold.rules.chain import outer_producer
from bnfold.fold.rules.plan import FoldPlan, TensorUpdate
from bnfold.fold.rules.reasons import Defer, Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded
from bnfold.model import proto
from bnfold.model.graph import Constant, NotConstant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr, is_op
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64

_T = proto.TensorProto
#: Integer types whose DequantizeLinear is (q - zero_point) * scale.
INTEGER_TYPES = frozenset({_T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT32, _T.INT4, _T.UINT4})
#: The smallest normal value of each scale type: a folded scale below it has lost precision.
SMALLEST_NORMAL = {_T.FLOAT: 2.0**-126, _T.FLOAT16: 2.0**-14, _T.BFLOAT16: 2.0**-126}


@dataclass
class Dequantized:
    """A layer's weight made at run time by a DequantizeLinear from a constant integer tensor."""

    node: proto.NodeProto  # the DequantizeLinear
    scope: Scope  # where it is (the layer's scope or one around it)
    q: Constant
    scale: Constant
    layer: proto.NodeProto
    #: only the layer reads it, in the layer's own scope: it may change in place
    exclusive: bool

    @property
    def name(self) -> str:
        return str(self.node.output[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def elem_type(self) -> int:
        """The float type the layer sees: the scale's."""
        return self.scale.elem_type

    def scaled(
        self,
        channel_axis: int | None,
        s: F64,
        is_dirty: Callable[[proto.NodeProto], bool],
    ) -> FoldPlan:
        """The plan for the DequantizeLinear (or its private copy) that multiplies output channel
        c of the weight, on ``channel_axis`` of it, by ``s[c]``; Skip when that is not exact."""
        if is_dirty(self.node):
            raise Defer
        dq = self.node
        rank = len(self.shape)
        form, axis, block = _form(self)
        if np.all(s == s[0]):  # one factor for every channel: any form takes it as it is
            factor = np.asarray(s[0], dtype=np.float64)
            return self._plan([self._new_scale(factor)])
        if channel_axis is None:
            raise Skip(
                Reason.QUANTIZED_WEIGHT,
                f"the output channels of {describe(self.layer)} span two axes of its weight "
                f"(groups), which the scale of {describe(dq)} cannot follow",
            )
        channels = self.shape[channel_axis]
        along = [channels if i == channel_axis else 1 for i in range(rank)]
        if form == "per-tensor":
            if self.scope.opset < 13:
                raise Skip(
                    Reason.QUANTIZED_WEIGHT,
                    f"{describe(dq)} has one scale for the whole weight, and at opset "
                    f"{self.scope.opset} it cannot take one per output channel (that needs "
                    "opset 13)",
                )
            updates = [self._new_scale(s)]  # [C]: the one scale times each s[c]
            zp = self._zero_point()
            if zp is not None and zp.shape != self.scale.shape:
                raise Skip(
                    Reason.SHAPE_MISMATCH,
                    f"{describe(dq)} has a zero point of shape {list(zp.shape)} and a scale of "
                    f"shape {list(self.scale.shape)}",
                )
            if zp is not None:
                repeated = np.ascontiguousarray(np.broadcast_to(zp.array().reshape(()), s.shape))
                updates.append(TensorUpdate(2, repeated, zp.elem_type, zp.name))
            return self._plan(updates, set_attrs={"axis": channel_axis})
        if form == "per-axis" and axis != channel_axis:
            raise Skip(
                Reason.QUANTIZED_WEIGHT,
                f"{describe(dq)} scales the weight per axis {axis}, but the output channels of "
                f"{describe(self.layer)} are on axis {channel_axis}: one factor per channel "
                "would need a scale per element",
            )
        if form == "blocked" and axis == channel_axis and block > 1:
            raise Skip(
                Reason.QUANTIZED_WEIGHT,
                f"{describe(dq)} shares one scale among blocks of {block} output channels of "
                f"{describe(self.layer)}, which the normalization scales differently",
            )
        factor = s if form == "per-axis" else s.reshape(along)
        return self._plan([self._new_scale(factor)])

    def _new_scale(self, factor: F64) -> TensorUpdate:
        """The scale times ``factor`` in float64, rounded once; Skip when that overflows or
        underflows the scale's type (a scale that rounds to a subnormal has lost precision)."""
        scale = self.scale
        exact = numerics.scaled(scale.array(), factor)
        what = f"scale of {describe(self.node)}"
        new = rounded(exact, scale.elem_type, what)
        tiny = SMALLEST_NORMAL[scale.elem_type]
        lost = (exact != 0) & (np.abs(new.astype(np.float64)) < tiny)
        if lost.any():
            raise Skip(
                Reason.NON_FINITE,
                f"folding would give {int(lost.sum())} value(s) of the {what} below the smallest "
                f"normal {numerics.dtype_name(scale.elem_type)} ({tiny:.3g}), e.g. from a tiny "
                "gamma: they would lose their precision",
            )
        return TensorUpdate(1, new, scale.elem_type, scale.name)

    def _zero_point(self) -> Constant | None:
        """The zero point, which must be a constant to be repeated per channel."""
        name = self.node.input[2] if len(self.node.input) > 2 else ""
        if not name:
            return None
        try:
            return self.scope.constant(name)
        except NotConstant as exc:
            raise Skip(
                Reason.NON_CONSTANT_WEIGHT,
                f"the zero point '{name}' of {describe(self.node)} is not a constant ({exc}), "
                "and a per-tensor zero point has to be repeated per output channel",
            ) from None

    def _plan(
        self, updates: list[TensorUpdate], set_attrs: dict[str, int] | None = None
    ) -> FoldPlan:
        return FoldPlan(
            updates,
            set_attrs=set_attrs or {},
            private_for=None if self.exclusive else self.layer,
        )

    def note(self, target: str) -> str:
        """The report's words for a fold into ``target`` through this weight's scale."""
        copy = "" if self.exclusive else " (a copy of it for this layer: others read it too)"
        return (
            f"into {target} through the scale of its {describe(self.node)}{copy}; the "
            f"{numerics.dtype_name(self.q.elem_type)} weight '{self.q.name}' is unchanged"
        )


def _form(w: Dequantized) -> tuple[str, int, int]:
    """("per-tensor" | "per-axis" | "blocked", the quantization axis, block size) of the scale,
    or Skip(shape_mismatch) when its shape fits none."""
    dq, shape, sshape = w.node, w.shape, w.scale.shape
    rank = len(shape)
    block = _int_attr(dq, "block_size", 0)
    axis = _int_attr(dq, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    if block == 0 and len(sshape) <= 1 and int(np.prod(sshape, dtype=np.int64)) == 1:
        return "per-tensor", axis, 0
    if 0 <= axis < rank and block == 0 and sshape == (shape[axis],):
        return "per-axis", axis, 0
    if 0 <= axis < rank and block > 0:
        blocks = tuple(-(-d // block) if i == axis else d for i, d in enumerate(shape))
        if sshape == blocks:
            return "blocked", axis, block
    raise Skip(
        Reason.SHAPE_MISMATCH,
        f"{describe(dq)} has a scale of shape {list(sshape)} for a weight of shape "
        f"{list(shape)} (axis {axis}, block_size {block})",
    )


def _int_attr(node: proto.NodeProto, name: str, default: int) -> int:
    """An integer attribute, or Skip when a (hostile) model gives it another type."""
    value = get_attr(node, name, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise Skip(
        Reason.SHAPE_MISMATCH, f"{describe(node)} has a '{name}' attribute that is not an integer"
    )


def find(scope: Scope, layer: proto.NodeProto, index: int, label: str) -> Dequantized | None:
    """The DequantizeLinear that makes input ``index`` of ``layer``, None when none does; Skip
    when it is one that no fold can go through (a non-constant or non-integer weight, ...)."""
    name = layer.input[index] if index < len(layer.input) else ""
    dq, where = outer_producer(scope, name) if name else (None, scope)
    if dq is None or not is_op(dq, "DequantizeLinear"):
        return None
    ref = attr_is_reference(dq, ("axis", "block_size", "output_dtype"))
    if ref:
        raise Skip(
            Reason.FUNCTION_ATTRIBUTE,
            f"{describe(dq)}, which makes the {label} of {describe(layer)}, takes '{ref}' from "
            "the function's attributes",
        )
    found: list[Constant] = []
    for k, what in enumerate(("integer weight", "scale")):
        source = dq.input[k] if k < len(dq.input) else ""
        try:
            found.append(where.constant(source))
        except NotConstant as exc:
            raise Skip(
                Reason.NON_CONSTANT_WEIGHT,
                f"{describe(layer)} {label} '{name}' is dequantized by {describe(dq)} from the "
                f"{what} '{source}', which is not a constant: {exc}",
            ) from None
    q, scale = found
    if q.elem_type not in INTEGER_TYPES:
        raise Skip(
            Reason.UNSUPPORTED_DTYPE,
            f"{describe(dq)} dequantizes a {numerics.dtype_name(q.elem_type)} weight; only "
            "integer weights (int4 to int32) are folded through their scale",
        )
    output_dtype = _int_attr(dq, "output_dtype", 0)
    if scale.elem_type not in SMALLEST_NORMAL or output_dtype not in (0, scale.elem_type):
        out = f" and output_dtype {numerics.dtype_name(output_dtype)}" if output_dtype else ""
        raise Skip(
            Reason.UNSUPPORTED_DTYPE,
            f"{describe(dq)} has a {numerics.dtype_name(scale.elem_type)} scale{out}; a fold "
            "into it needs a float32, float16 or bfloat16 scale of the output's type",
        )
    out_name = dq.output[0]
    exclusive = where is scope and out_name not in scope.output_set and scope.uses(out_name) == 1
    return Dequantized(dq, where, q, scale, layer, exclusive)


def dequantized_input(scope: Scope, layer: proto.NodeProto, index: int) -> proto.NodeProto | None:
    """The DequantizeLinear that makes input ``index`` of ``layer``, if one does."""
    name = layer.input[index] if index < len(layer.input) else ""
    node, _ = outer_producer(scope, name) if name else (None, scope)
    return node if node is not None and is_op(node, "DequantizeLinear") else None
