"""Concat -> BN (YOLO BottleneckCSP): the BN splits by channel slice into the layers the Concat
joins, all of them or none."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

RNG = np.random.default_rng(14)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.4, shape).astype(np.float32)


def csp(
    *,
    inner_bn: bool = False,
    axis: int = 1,
    look_through: bool = False,
    shared: bool = False,
    weight_input: bool = False,
    relu_input: bool = False,
    add_after: bool = False,
) -> onnx.ModelProto:
    """x -> cv1 -> Relu -> cv3 [-> BN] ; x -> cv2 ; BN(cat(cv3, cv2)) -> LeakyRelu."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="cv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], name="cv3", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="cv2"),
    ]
    inits = [tensor("w1", _w(4, 4, 1, 1)), tensor("w3", _w(5, 4, 3, 3))]
    inits += [tensor("b3", RNG.normal(0, 1, 5).astype(np.float32))]
    inputs = [vinfo("x", TensorProto.FLOAT, [2, 4, 6, 6])]
    if weight_input:
        inputs.append(vinfo("w2", TensorProto.FLOAT, [3, 4, 1, 1]))
    else:
        inits.append(tensor("w2", _w(3, 4, 1, 1)))
    first = "c3"
    if inner_bn:
        nodes.append(bn_node("c3", "c3n", "inner"))
        inits += bn_initializers("inner", bn_stats(RNG, 5))
        first = "c3n"
    second = "c2"
    if look_through:
        nodes.append(helper.make_node("Identity", ["c2"], ["c2i"], name="ident"))
        nodes.append(helper.make_node("Add", ["c2i", "bias2"], ["c2a"], name="add2"))
        inits.append(tensor("bias2", RNG.normal(0, 1, (3, 1, 1)).astype(np.float32)))
        second = "c2a"
    if relu_input:
        nodes.append(helper.make_node("Relu", ["c2"], ["c2r"], name="relu2"))
        second = "c2r"
    nodes.append(helper.make_node("Concat", [first, second], ["cat"], name="cat", axis=axis))
    channels = 8 if axis in (1, -3) else 5
    bn_in = "cat"
    if add_after:
        nodes.append(helper.make_node("Add", ["cat", "shift"], ["cata"], name="add_after"))
        inits.append(tensor("shift", RNG.normal(0, 1, (8, 1, 1)).astype(np.float32)))
        bn_in = "cata"
    nodes.append(bn_node(bn_in, "n", "bn"))
    nodes.append(helper.make_node("LeakyRelu", ["n"], ["y"], name="act", alpha=0.1))
    inits += bn_initializers("bn", bn_stats(RNG, channels))
    outputs = [vinfo("y", TensorProto.FLOAT, None)]
    if shared:
        outputs.append(vinfo("c2", TensorProto.FLOAT, None))
    if axis == 2:  # join along H: cv3 and cv2 must agree on channels
        inits = [t for t in inits if t.name not in ("w2",)] + [tensor("w2", _w(5, 4, 1, 1))]
    return make_model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize("axis", [1, -3])
def test_concat_bn_splits_into_both_convs(axis: int) -> None:
    result = assert_fold_matches(csp(axis=axis), expect_folded=1)
    (decision,) = result.report.decisions
    assert "folded by channel slices into the 2 layers" in decision.message
    assert count_ops(result.model, "BatchNormalization") == 0
    assert result.model.graph.node[-2].output[0] == "n"  # the Concat writes the BN's output


def test_concat_bn_through_identity_and_add_on_each_side() -> None:
    """An Identity inside a branch is looked through; the Add after the Concat moves the mean."""
    model = csp(look_through=True, add_after=True)
    add2 = next(n for n in model.graph.node if n.name == "add2")
    model.graph.node.remove(add2)  # (a branch's own Add folds as a shift layer by itself)
    next(n for n in model.graph.node if n.op_type == "Concat").input[1] = "c2i"
    result = assert_fold_matches(model, expect_folded=1)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Identity" not in ops and "Add" not in ops


def test_csp_whose_producer_is_conv_bn_folds_both() -> None:
    """The inner Conv -> BN folds first, the outer BN in the next pass."""
    result = assert_fold_matches(csp(inner_bn=True), expect_folded=2)
    assert count_ops(result.model, "BatchNormalization") == 0


def _refused(model: onnx.ModelProto, reason: str, *words: str) -> None:
    result = fold_model(model)
    (decision,) = [d for d in result.report.decisions if d.output == "n"]
    assert decision.reason == reason, decision.message
    for word in words:
        assert word in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_input_with_another_consumer_is_refused() -> None:
    _refused(csp(shared=True), "graph_output", "input 1 'c2'")


def test_input_read_by_another_node_is_refused() -> None:
    model = csp()
    model.graph.node.append(helper.make_node("Relu", ["c2"], ["z"], name="other"))
    model.graph.output.append(vinfo("z", TensorProto.FLOAT, None))
    _refused(model, "shared_output", "input 1 'c2'", "Relu 'other'")


def test_non_constant_weight_is_refused() -> None:
    _refused(csp(weight_input=True), "non_constant_weight", "graph input")


def test_non_layer_input_is_refused() -> None:
    _refused(csp(relu_input=True), "unsupported_producer", "Relu 'relu2'")


def test_graph_input_into_concat_is_refused() -> None:
    model = csp()
    model.graph.node[4].input[1] = "x"  # cat(cv3, x): x has no layer to take its channels
    _refused(model, "no_producer", "graph input")


def test_concat_on_another_axis_is_refused() -> None:
    _refused(csp(axis=2), "not_per_channel", "along axis 2")


def test_gemm_and_matmul_joined_on_the_last_axis() -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "g", "gc"], ["p"], name="gemm", transB=1),
        helper.make_node("MatMul", ["a", "m"], ["q"], name="matmul"),
        helper.make_node("Concat", ["p", "q"], ["cat"], name="cat", axis=-1),
        bn_node("cat", "y", "bn"),
    ]
    inits = [tensor("g", _w(3, 6)), tensor("gc", RNG.normal(0, 1, 3).astype(np.float32))]
    inits += [tensor("m", _w(6, 4)), *bn_initializers("bn", bn_stats(RNG, 7))]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [5, 6])],
        [vinfo("y", TensorProto.FLOAT, [5, 7])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Gemm", "Concat"]


def test_grouped_convtranspose_and_conv_joined() -> None:
    """A U-Net-like join: upsampled ConvTranspose (group 2) output next to a skip Conv."""
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["up"], name="up", strides=[2, 2], group=2),
        helper.make_node("Conv", ["s", "wc", "bc"], ["skip"], name="skip"),
        helper.make_node("Concat", ["up", "skip"], ["cat"], name="cat", axis=1),
        bn_node("cat", "n", "bn"),
        helper.make_node("Relu", ["n"], ["y"], name="act"),
    ]
    inits = [tensor("wt", _w(4, 3, 2, 2)), tensor("wc", _w(5, 2, 1, 1))]
    inits += [tensor("bc", RNG.normal(0, 1, 5).astype(np.float32))]
    inits += bn_initializers("bn", bn_stats(RNG, 11))
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3]), vinfo("s", TensorProto.FLOAT, [1, 2, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 11, 6, 6])],
        inits,
    )
    assert_fold_matches(model, expect_folded=1)


def test_channel_count_that_does_not_add_up() -> None:
    model = csp()
    bn = [t for t in model.graph.initializer if t.name.startswith("bn_")]
    for t in bn:
        model.graph.initializer.remove(t)
    model.graph.initializer.extend(bn_initializers("bn", bn_stats(RNG, 9)))
    _refused(model, "shape_mismatch", "produce 8")
