"""BatchNormalization -> Conv: fold the normalization into the Conv AFTER it (pre-activation nets,
input normalization). BN(x) = s * x + t per input channel, so

    W'[o, i, k] = W[o, i, k] * s[c(o, i)]    b'[o] = b[o] + sum_{i,k} W[o, i, k] * t[c(o, i)]

with c(o, i) the input channel that weight column i of output o reads (groups and depthwise
included). Exact only without padding: a padded Conv adds zeros around BN's output, where the
folded Conv would see zeros around x, i.e. a different border. So any non-zero pad skips.
"""

from __future__ import annotations

import numpy as np

from bnfold.fold.rules.base import LayerAfterRule
from bnfold.fold.rules.batchnorm import BatchNorm
from bnfold.fold.rules.following import Following, input_shift
from bnfold.fold.rules.plan import RuleContext
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Constant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr
from bnfold.numerics import arith as numerics
from bnfold.numerics.arith import F64


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BNIntoConv(LayerAfterRule):
    op_types = ("Conv",)
    weight_label = "weight"
    bias_label = "bias"
    bias_suffix = "_bias"

    def check_layer(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> None:
        conv = following.consumer
        ref = attr_is_reference(conv, ("pads", "auto_pad", "group"))
        if ref:
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"the {describe(conv)} after it takes '{ref}' from the function's attributes",
            )
        auto_pad = _text(get_attr(conv, "auto_pad", "NOTSET"))
        pads = [int(p) for p in get_attr(conv, "pads", [])]
        if auto_pad.startswith("SAME") or (auto_pad == "NOTSET" and any(pads)):
            how = f"auto_pad {auto_pad}" if auto_pad.startswith("SAME") else f"pads {pads}"
            raise Skip(
                Reason.PADDED_CONV,
                f"the {describe(conv)} after it pads with zeros ({how}): the shift of the "
                "normalization would be missing at the border, so folding is not exact",
            )

    def spread(
        self,
        layer: proto.NodeProto,
        w: Constant,
        b: Constant | None,
        bn: BatchNorm,
        spatial: int,
    ) -> tuple[F64, F64]:
        group = int(get_attr(layer, "group", 1))
        shape = w.shape
        if len(shape) < 3 or group < 1 or shape[0] % group:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"the {describe(layer)} after it has weight {list(shape)} with group={group}",
            )
        cout, per_group = shape[0], shape[1]
        if bn.channels != per_group * group:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels but the {describe(layer)} after it reads "
                f"{per_group * group}",
            )
        if b is not None and b.shape != (cout,):
            raise Skip(Reason.SHAPE_MISMATCH, f"{describe(layer)} bias has shape {list(b.shape)}")
        # input channel read by weight column i of output channel o
        channel = (np.arange(cout) // (cout // group))[:, None] * per_group + np.arange(per_group)
        layout = (cout, per_group) + (1,) * (len(shape) - 2)
        return bn.s[channel].reshape(layout), input_shift(bn)[channel].reshape(layout)

    def shifted_bias(self, layer: proto.NodeProto, w: Constant, b: Constant | None, t: F64) -> F64:
        with np.errstate(over="ignore", invalid="ignore"):
            bias: F64 = (numerics.to_float64_array(w.array()) * t).sum(
                axis=tuple(range(1, len(w.shape)))
            )
        if b is not None:
            bias = bias + numerics.to_float64_array(b.array())
        return bias


RULE = BNIntoConv()
