"""The rules are explicit ordered tuples; one op type has one rule, never silently two."""

from __future__ import annotations

import pytest

from bnfold.fold.engine import FoldEngine
from bnfold.fold.rules import (
    DEFAULT_RULES,
    FORWARD_RULES,
    LAYER_RULES,
    LayerBeforeRule,
    rules_by_op,
)
from bnfold.fold.rules.conv_bn import ConvBN
from tests.builders import make_model, vinfo


def test_default_rules_claim_each_op_once() -> None:
    assert sorted(rules_by_op(LAYER_RULES)) == ["Conv", "ConvTranspose", "Gemm", "MatMul"]
    assert sorted(rules_by_op(DEFAULT_RULES)) == [
        "Concat",
        "Conv",
        "ConvTranspose",
        "Flatten",
        "Gemm",
        "MatMul",
        "Reshape",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    ]
    assert sorted(rules_by_op(FORWARD_RULES)) == ["Conv", "Gemm", "MatMul"]
    assert all(isinstance(rule, LayerBeforeRule) for rule in LAYER_RULES)


def test_two_rules_for_one_op_are_refused() -> None:
    class OtherConv(ConvBN):
        pass

    with pytest.raises(ValueError, match="ConvBN and OtherConv both fold into Conv"):
        rules_by_op((*DEFAULT_RULES, OtherConv()))
    model = make_model([], [vinfo("x", 1, [1])], [vinfo("x", 1, [1])])
    with pytest.raises(ValueError, match="both fold into Conv"):
        FoldEngine(model, (*DEFAULT_RULES, OtherConv()))
