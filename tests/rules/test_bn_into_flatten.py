"""BN -> Flatten/Reshape(N, -1) -> Gemm/MatMul with spatial size > 1 (LeNet-like heads): input
column c*HW + k is channel c, so it scales by s[c] and the shift goes into the bias."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

RNG = np.random.default_rng(41)
C, H, W, OUT = 3, 4, 2, 5


def head(
    *,
    flatten: str = "flatten",
    layer: str = "gemm",
    shape: list[int] | None = None,
    relu: bool = False,
    spatial_known: bool = True,
    **gemm_attrs: Any,
) -> onnx.ModelProto:
    """x -> MaxPool -> BN [-> Relu] -> Flatten/Reshape -> Gemm/MatMul."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        bn_node("p", "n", "bn"),
    ]
    inits = bn_initializers("bn", bn_stats(RNG, C))
    src = "n"
    if relu:
        nodes.append(helper.make_node("Relu", ["n"], ["nr"], name="relu"))
        src = "nr"
    if flatten == "flatten":
        nodes.append(helper.make_node("Flatten", [src], ["f"], name="flat", axis=1))
    else:
        nodes.append(helper.make_node("Reshape", [src, "shape"], ["f"], name="flat"))
        inits.append(tensor("shape", np.array(shape, dtype=np.int64)))
    trans_b = int(gemm_attrs.get("transB", 0))
    w = RNG.normal(0, 0.4, (OUT, C * H * W) if trans_b else (C * H * W, OUT))
    inits.append(tensor("w", w.astype(np.float32)))
    if layer == "gemm":
        nodes.append(helper.make_node("Gemm", ["f", "w", "c"], ["y"], name="fc", **gemm_attrs))
        inits.append(tensor("c", RNG.normal(0, 1, OUT).astype(np.float32)))
    else:
        nodes.append(helper.make_node("MatMul", ["f", "w"], ["y"], name="fc"))
    dims: list[Any] = [2, C, 2 * H, 2 * W] if spatial_known else [2, C, "h", "w"]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, dims)],
        [vinfo("y", TensorProto.FLOAT, [2, OUT] if spatial_known else None)],
        inits,
    )


@pytest.mark.parametrize(
    "attrs", [{}, {"transB": 1}, {"transB": 1, "alpha": 0.5, "beta": 2.0}], ids=["B", "Bt", "ab"]
)
def test_bn_flatten_gemm(attrs: dict[str, Any]) -> None:
    result = assert_fold_matches(head(**attrs), expect_folded=1)
    assert "through Flatten" in result.report.decisions[0].message
    assert [n.op_type for n in result.model.graph.node] == ["MaxPool", "Flatten", "Gemm"]


@pytest.mark.parametrize(
    "shape",
    [[0, -1], [-1, C * H * W], [2, -1], [0, C * H * W]],
    ids=["0,-1", "-1,CHW", "N,-1", "0,CHW"],
)
@pytest.mark.parametrize("layer", ["gemm", "matmul"])
def test_bn_reshape_flatten(shape: list[int], layer: str) -> None:
    result = assert_fold_matches(head(flatten="reshape", shape=shape, layer=layer), expect_folded=1)
    (decision,) = result.report.decisions
    assert "through Reshape" in decision.message
    assert [n.op_type for n in result.model.graph.node] == ["MaxPool", "Reshape", "Gemm"]
    assert result.model.graph.node[-1].output[0] == "y"


def test_bn_flatten_matmul_becomes_gemm() -> None:
    result = assert_fold_matches(head(layer="matmul"), expect_folded=1)
    assert "(was MatMul)" in result.report.decisions[0].message


def _refused(model: onnx.ModelProto, reason: str, *words: str) -> None:
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == reason, decision.message
    for word in words:
        assert word in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_relu_between_bn_and_flatten_is_not_folded() -> None:
    _refused(head(relu=True), "unsupported_producer", "MaxPool", "Relu 'relu' between it and")


@pytest.mark.parametrize(
    ("shape", "layer"),
    [([-1, H * W], "gemm"), ([2, C, H * W], "matmul"), ([C * H * W, -1], "gemm")],
    ids=["columns-per-position", "rank-3", "batch-in-columns"],
)
def test_reshape_that_does_not_flatten_per_channel(shape: list[int], layer: str) -> None:
    _refused(head(flatten="reshape", shape=shape, layer=layer), "not_per_channel", str(shape))


def test_flatten_on_another_axis() -> None:
    model = head()
    model.graph.node[2].attribute[0].i = 2
    model.graph.output[0].type.tensor_type.ClearField("shape")
    _refused(model, "not_per_channel", "axis 2")


def test_unknown_spatial_size() -> None:
    _refused(head(spatial_known=False), "unknown_shape", "'p'")


def test_reshape_to_a_computed_shape() -> None:
    model = head(flatten="reshape", shape=[0, -1])
    model.graph.node[2].input[1] = "dyn"
    model.graph.input.append(vinfo("dyn", TensorProto.INT64, [2]))
    _refused(model, "unknown_shape", "not a constant")


@pytest.mark.parametrize("layer", ["gemm", "matmul"])
def test_torch_view_of_size_0_and_minus_1(layer: str) -> None:
    """``x.view(x.size(0), -1)``: the target is Concat(Unsqueeze(Gather(Shape(bn), 0)), [-1])."""
    model = head(flatten="reshape", shape=[0, -1], layer=layer)
    graph = model.graph
    shape_nodes = [
        helper.make_node("Shape", ["n"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "zero"], ["g"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["g", "axes"], ["u"], name="unsqueeze"),
        helper.make_node("Concat", ["u", "minus1"], ["target"], name="target", axis=0),
    ]
    for k, node in enumerate(shape_nodes):
        graph.node.insert(2 + k, node)
    graph.node[-2].input[1] = "target"
    graph.initializer.extend(
        [
            tensor("zero", np.array(0, dtype=np.int64)),
            tensor("axes", np.array([0], dtype=np.int64)),
            tensor("minus1", np.array([-1], dtype=np.int64)),
        ]
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert "through Reshape" in result.report.decisions[0].message
    shape = next(n for n in result.model.graph.node if n.op_type == "Shape")
    assert shape.input[0] == "p"


def test_view_of_another_size_is_refused() -> None:
    """Concat(Unsqueeze(Gather(Shape(bn), 1)), [-1]) is [C, -1]: not a flatten per channel."""
    model = head(flatten="reshape", shape=[0, -1])
    graph = model.graph
    shape_nodes = [
        helper.make_node("Shape", ["n"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "one"], ["g"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["g", "axes"], ["u"], name="unsqueeze"),
        helper.make_node("Concat", ["u", "minus1"], ["target"], name="target", axis=0),
    ]
    for k, node in enumerate(shape_nodes):
        graph.node.insert(2 + k, node)
    graph.node[-2].input[1] = "target"
    graph.initializer.extend(
        [
            tensor("one", np.array(1, dtype=np.int64)),
            tensor("axes", np.array([0], dtype=np.int64)),
            tensor("minus1", np.array([-1], dtype=np.int64)),
        ]
    )
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "unknown_shape"
    assert result.model.SerializeToString() == model.SerializeToString()


def _onnxscript_flatten(tail: int) -> onnx.ModelProto:
    """x [N, C, 2H, 2W] -> MaxPool -> BN -> Reshape(n, Concat(Reshape(Squeeze(Shape(x)[0:1]),
    [-1]), [tail]), allowzero=1) -> Gemm: torch's ``x.view(N, -1)`` through the dynamo exporter
    without its optimizer (the batch read from the graph input, not from BN's input)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], name="shape", start=0, end=1),
        helper.make_node("Squeeze", ["xs"], ["n0"], name="squeeze"),
        helper.make_node("Reshape", ["n0", "minus_one"], ["n1"], name="as_1d"),
        helper.make_node("Concat", ["n1", "tail"], ["target"], name="concat", axis=0),
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        bn_node("p", "n", "bn"),
        helper.make_node("Reshape", ["n", "target"], ["f"], name="flat", allowzero=1),
        helper.make_node("Gemm", ["f", "w", "c"], ["y"], name="fc", transB=1),
    ]
    inits = [
        tensor("minus_one", np.array([-1], np.int64)),
        tensor("tail", np.array([tail], np.int64)),
        *bn_initializers("bn", bn_stats(RNG, C)),
        tensor("w", RNG.normal(0, 0.4, (OUT, C * H * W)).astype(np.float32)),
        tensor("c", RNG.normal(0, 1, OUT).astype(np.float32)),
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", C, 2 * H, 2 * W])],
        [vinfo("y", TensorProto.FLOAT, ["N", OUT])],
        inits,
    )


def test_flatten_with_a_computed_batch_folds_forward() -> None:
    """The target is [?, C*H*W]: the computed first element can only be N (it was
    unknown_shape, "takes its shape from a value that is not a constant")."""
    result = assert_fold_matches(_onnxscript_flatten(C * H * W), expect_folded=1)
    assert "after it through Reshape" in result.report.decisions[0].message


def test_flatten_with_a_computed_batch_and_another_tail_is_refused() -> None:
    """[?, C*H] would put W rows per sample: not the BN's columns in NCHW order."""
    (d,) = fold_model(_onnxscript_flatten(C * H)).report.decisions
    assert d.reason == "unknown_shape", d.message
