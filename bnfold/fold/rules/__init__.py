"""Folding rules, one layer type per module, in explicit ordered tuples (no registration by
import side effect). Each op type has one rule in each tuple: ``rules_by_op`` refuses two."""

from __future__ import annotations

from bnfold.fold.rules import (
    bn_into_conv,
    bn_into_gemm,
    bn_into_matmul,
    concat_bn,
    conv_bn,
    convtranspose_bn,
    gemm_bn,
    matmul_bn,
    reshape_bn,
)
from bnfold.fold.rules.base import FoldRule, ForwardRule, LayerBeforeRule, rules_by_op
from bnfold.fold.rules.reasons import Reason, Skip

#: The layers a BatchNormalization folds into directly (also each input of a Concat).
LAYER_RULES: tuple[FoldRule, ...] = (
    conv_bn.RULE,
    convtranspose_bn.RULE,
    gemm_bn.RULE,
    matmul_bn.RULE,
)

DEFAULT_RULES: tuple[FoldRule, ...] = (
    *LAYER_RULES,
    concat_bn.ConcatBN(LAYER_RULES),
    reshape_bn.ReshapeBN((gemm_bn.RULE, matmul_bn.RULE)),
)

#: Rules for a BatchNormalization that cannot fold into the layer before it: into the one after.
FORWARD_RULES: tuple[ForwardRule, ...] = (
    bn_into_conv.RULE,
    bn_into_gemm.RULE,
    bn_into_matmul.RULE,
)

__all__ = [
    "DEFAULT_RULES",
    "FORWARD_RULES",
    "LAYER_RULES",
    "FoldRule",
    "ForwardRule",
    "LayerBeforeRule",
    "Reason",
    "Skip",
    "rules_by_op",
]
