"""Conv -> BN: 1/2/3-D, grouped, depthwise, with or without bias, float32 and float16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches


def conv_bn_model(
    *, rank: int, group: int, bias: bool, cin: int = 4, cout: int = 8, dtype: type = np.float32,
    seed: int = 0,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:  # fmt: skip
    rng = np.random.default_rng(seed)
    if group == 0:  # depthwise
        group, cout = cin, cin
    k = [3] * rank
    w: np.ndarray = rng.normal(0, 0.3, (cout, cin // group, *k)).astype(dtype)
    b: np.ndarray = rng.normal(0, 0.3, cout).astype(dtype)
    params = bn_params(rng, cout, dtype)
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", group=group, pads=[1] * 2 * rank),
        bn_node("c", "y", "bn"),
    ]
    inits = [tensor("w", w)] + ([tensor("b", b)] if bias else []) + bn_initializers("bn", params)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    spatial = [6] * rank
    model = make_model(
        nodes, [vinfo("x", elem, [2, cin, *spatial])], [vinfo("y", elem, None)], inits
    )
    return model, {"w": w, "b": b, **params}


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2, 0], ids=["group1", "group2", "depthwise"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_bn_folds_exactly(rank: int, group: int, bias: bool) -> None:
    model, p = conv_bn_model(rank=rank, group=group, bias=bias)
    result = assert_fold_matches(model, expect_folded=1)
    (conv,) = result.model.graph.node
    assert conv.op_type == "Conv" and conv.output[0] == "y" and len(conv.input) == 3
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    # the folded weights are W*s and s*(b - mean) + beta, computed here in float64
    s = p["scale"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + 1e-5)
    b0 = p["b"].astype(np.float64) if bias else 0.0
    expect_w = p["w"].astype(np.float64) * s.reshape((-1,) + (1,) * (rank + 1))
    expect_b = s * (b0 - p["mean"]) + p["B"]
    np.testing.assert_array_equal(inits[conv.input[1]], expect_w.astype(np.float32))
    np.testing.assert_array_equal(inits[conv.input[2]], expect_b.astype(np.float32))
    d = result.report.decisions[0]
    assert d.status == "folded" and d.reason == "folded" and d.producer == "Conv"


def test_depthwise_bias_is_scaled_not_just_shifted() -> None:
    """ncnn folded depthwise biases as b + t; the right value is s*b + t."""
    model, p = conv_bn_model(rank=2, group=0, bias=True)
    result = assert_fold_matches(model, expect_folded=1)
    conv = result.model.graph.node[0]
    new_b = next(
        numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == conv.input[2]
    )
    s = p["scale"] / np.sqrt(p["var"] + 1e-5)
    wrong = p["b"] + (p["B"] - s * p["mean"])
    assert not np.allclose(new_b, wrong)


def test_float16_conv_bn() -> None:
    model, _ = conv_bn_model(rank=2, group=1, bias=True, dtype=np.float16)
    result = assert_fold_matches(model, expect_folded=1, rtol=1e-2, atol=1e-2)
    assert all(t.data_type == TensorProto.FLOAT16 for t in result.model.graph.initializer)


def test_weights_in_constant_nodes() -> None:
    """PP-OCR keeps every weight in Constant nodes; looking only at initializers folds nothing."""
    model, _ = conv_bn_model(rank=2, group=1, bias=True)
    consts = [
        helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
        for t in model.graph.initializer
    ]
    nodes = consts + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    result = assert_fold_matches(model, expect_folded=1)
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
