"""BN -> Conv and BN -> [Flatten ->] Gemm: the BatchNormalization folds into the layer AFTER it
when nothing before it can take it, exactly only without padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

RNG = np.random.default_rng(5)


def _bn_conv(
    *, cin: int, cout: int, group: int, bias: bool, rank: int = 2, **attrs: Any
) -> onnx.ModelProto:
    k = [3] * rank
    w = RNG.normal(0, 0.3, (cout, cin // group, *k)).astype(np.float32)
    inputs = ["n", "w", "b"] if bias else ["n", "w"]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),  # pre-activation style: nothing to fold back into
        bn_node("r", "n", "bn"),
        helper.make_node("Conv", inputs, ["y"], group=group, **attrs),
    ]
    inits = [tensor("w", w), *bn_initializers("bn", bn_params(RNG, cin))]
    if bias:
        inits.append(tensor("b", RNG.normal(0, 1, cout).astype(np.float32)))
    spatial = [9] * rank
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, cin, *spatial])],
        [vinfo("y", TensorProto.FLOAT, None)],
        inits,
    )


@pytest.mark.parametrize(
    ("cin", "cout", "group"), [(4, 6, 1), (4, 6, 2), (6, 6, 6)], ids=["g1", "g2", "depthwise"]
)
@pytest.mark.parametrize("bias", [False, True])
def test_bn_into_unpadded_conv(cin: int, cout: int, group: int, bias: bool) -> None:
    model = _bn_conv(cin=cin, cout=cout, group=group, bias=bias, strides=[2, 1], dilations=[1, 2])
    result = assert_fold_matches(model, expect_folded=1)
    (decision,) = result.report.decisions
    assert "after it" in decision.message
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Conv"]


@pytest.mark.parametrize("attrs", [{"auto_pad": "VALID"}, {"pads": [0, 0, 0, 0, 0, 0]}])
def test_valid_padding_and_3d(attrs: dict[str, Any]) -> None:
    model = _bn_conv(cin=3, cout=4, group=1, bias=True, rank=3, **attrs)
    assert_fold_matches(model, expect_folded=1)


@pytest.mark.parametrize(
    ("attrs", "shown"),
    [({"pads": [0, 1, 0, 1]}, "pads [0, 1, 0, 1]"), ({"auto_pad": "SAME_UPPER"}, "SAME_UPPER")],
)
def test_padded_conv_is_not_folded(attrs: dict[str, Any], shown: str) -> None:
    model = _bn_conv(cin=4, cout=4, group=1, bias=False, **attrs)
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "padded_conv" and shown in decision.message
    assert "not into the layer before it" in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [False, True])
def test_bn_into_gemm(trans_b: int, with_c: bool) -> None:
    b = RNG.normal(0, 0.3, (5, 4) if trans_b else (4, 5)).astype(np.float32)
    inputs = ["n", "b", "c"] if with_c else ["n", "b"]
    nodes = [
        bn_node("x", "n", "bn"),
        helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=0.75, beta=1.5),
    ]
    inits = [tensor("b", b), *bn_initializers("bn", bn_params(RNG, 4))]
    if with_c:
        inits.append(tensor("c", RNG.normal(0, 1, 5).astype(np.float32)))
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [3, 4])],
        [vinfo("y", TensorProto.FLOAT, [3, 5])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]


def test_bn_through_flatten_into_gemm_when_spatial_size_is_one() -> None:
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        bn_node("p", "n", "bn"),
        helper.make_node("Flatten", ["n"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "b"], ["y"], transB=1),
    ]
    inits = [
        tensor("b", RNG.normal(0, 0.3, (3, 6)).astype(np.float32)),
        *bn_initializers("bn", bn_params(RNG, 6)),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, 6, 5, 5])],
        [vinfo("y", TensorProto.FLOAT, [2, 3])],
        inits,
        value_info=[vinfo("p", TensorProto.FLOAT, [2, 6, 1, 1])],
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert "through Flatten" in result.report.decisions[0].message


def test_flatten_of_a_larger_spatial_size_folds_per_column() -> None:
    """Channel c is columns c*HW .. c*HW + HW - 1 (see also test_bn_into_flatten)."""
    nodes = [
        bn_node("x", "n", "bn"),
        helper.make_node("Flatten", ["n"], ["f"]),
        helper.make_node("Gemm", ["f", "b"], ["y"]),
    ]
    inits = [
        tensor("b", RNG.normal(0, 0.3, (8, 3)).astype(np.float32)),
        *bn_initializers("bn", bn_params(RNG, 2)),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 2, 2, 2])],
        [vinfo("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert "through Flatten" in result.report.decisions[0].message


def test_bn_read_by_two_layers_is_not_folded_forward() -> None:
    w = tensor("w", RNG.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32))
    nodes = [
        bn_node("x", "n", "bn"),
        helper.make_node("Conv", ["n", "w"], ["y"]),
        helper.make_node("Conv", ["n", "w"], ["y2"]),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [vinfo("y", TensorProto.FLOAT, None), vinfo("y2", TensorProto.FLOAT, None)],
        [w, *bn_initializers("bn", bn_params(RNG, 4))],
    )
    (decision,) = fold_model(model).report.decisions
    assert decision.reason == "no_producer"


def test_shared_weight_of_the_following_conv_is_not_edited() -> None:
    w = tensor("w", RNG.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32))
    nodes = [
        bn_node("x", "n", "bn"),
        helper.make_node("Conv", ["n", "w"], ["c"]),
        helper.make_node("Conv", ["c", "w"], ["y"]),  # the same weight, after
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [vinfo("y", TensorProto.FLOAT, None)],
        [w, *bn_initializers("bn", bn_params(RNG, 4))],
    )
    result = assert_fold_matches(model, expect_folded=1)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != "w" and convs[1].input[1] == "w"
    assert count_ops(result.model, "BatchNormalization") == 0
