"""Folding rules, one producer type per module, applied in this order."""

from __future__ import annotations

from bnfold.rules import conv_bn, convtranspose_bn, gemm_bn, matmul_bn
from bnfold.rules._base import FoldRule, Reason, Skip

DEFAULT_RULES: tuple[FoldRule, ...] = (
    conv_bn.RULE,
    convtranspose_bn.RULE,
    gemm_bn.RULE,
    matmul_bn.RULE,
)

__all__ = ["DEFAULT_RULES", "FoldRule", "Reason", "Skip"]
