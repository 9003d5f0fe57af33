"""MatMul/Gemm -> [Add] -> Reshape/Transpose -> BN: the BN folds into the layer's columns when the
Reshape/Transpose carry its column axis to the BN's channel axis 1, and only then."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches, run_ort

RNG = np.random.default_rng(23)


def chain(
    a_shape: list[Any],
    moves: list[tuple[str, Any]],
    channels: int,
    *,
    k: int = 6,
    cols: int = 5,
    layer: str = "MatMul",
    bias: tuple[int, ...] | None = None,
    relu: bool = False,
    output_too: bool = False,
) -> onnx.ModelProto:
    """A [a_shape] @ B [k, cols] [+ bias] -> moves -> BN(channels) -> Relu."""
    inits = [tensor("w", RNG.normal(0, 0.5, (k, cols)).astype(np.float32))]
    if layer == "MatMul":
        nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="fc")]
    else:
        nodes = [helper.make_node("Gemm", ["a", "w", "gc"], ["m"], name="fc", alpha=0.5)]
        inits.append(tensor("gc", RNG.normal(0, 1, cols).astype(np.float32)))
    x = "m"
    if bias is not None:
        nodes.append(helper.make_node("Add", ["m", "bias"], ["ma"], name="add"))
        inits.append(tensor("bias", RNG.normal(0, 1, bias).astype(np.float32)))
        x = "ma"
    if relu:
        nodes.append(helper.make_node("Relu", [x], ["mr"], name="relu"))
        x = "mr"
    for i, (op, arg) in enumerate(moves):
        if op == "Reshape":
            inits.append(tensor(f"shape{i}", np.array(arg, dtype=np.int64)))
            nodes.append(helper.make_node("Reshape", [x, f"shape{i}"], [f"v{i}"], name=f"r{i}"))
        elif op == "Unsqueeze":
            inits.append(tensor(f"axes{i}", np.array(arg, dtype=np.int64)))
            nodes.append(helper.make_node("Unsqueeze", [x, f"axes{i}"], [f"v{i}"], name=f"u{i}"))
        else:
            nodes.append(helper.make_node("Transpose", [x], [f"v{i}"], name=f"t{i}", perm=arg))
        x = f"v{i}"
    nodes.append(bn_node(x, "n", "bn"))
    nodes.append(helper.make_node("Relu", ["n"], ["y"], name="act"))
    inits += bn_initializers("bn", bn_stats(RNG, channels))
    outputs = [vinfo("y", TensorProto.FLOAT, None)]
    if output_too:
        outputs.append(vinfo("m", TensorProto.FLOAT, None))
    return make_model(nodes, [vinfo("a", TensorProto.FLOAT, a_shape)], outputs, inits)


@pytest.mark.parametrize(
    "target", [[0, 5, 1, 1], [-1, 5, 1, 1], [3, 5, 1], [0, -1, 1]], ids=lambda t: str(t)
)
@pytest.mark.parametrize("layer", ["MatMul", "Gemm"])
def test_linear_reshaped_to_nc11(target: list[int], layer: str) -> None:
    result = assert_fold_matches(
        chain([3, 6], [("Reshape", target)], 5, layer=layer), expect_folded=1
    )
    (decision,) = result.report.decisions
    assert "through Reshape 'r0' (its columns are the channels)" in decision.message
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Reshape", "Relu"]


@pytest.mark.parametrize("batch", [3, "N"])
@pytest.mark.parametrize("layer", ["MatMul", "Gemm"])
def test_linear_unsqueezed_twice(batch: Any, layer: str) -> None:
    """torch's ``fc(x).unsqueeze(-1).unsqueeze(-1)`` before a BatchNorm2d."""
    moves = [("Unsqueeze", [-1]), ("Unsqueeze", [-1])]
    result = assert_fold_matches(chain([batch, 6], moves, 5, layer=layer), expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == [
        "Gemm",
        "Unsqueeze",
        "Unsqueeze",
        "Relu",
    ]


def test_unsqueeze_in_front() -> None:
    """[3, 5] -> [1, 3, 5]: the columns stay last, not on axis 1."""
    _refused(chain([3, 6], [("Unsqueeze", [0])], 5), "not_per_channel", "axis 2")


def test_unsqueeze_in_front_with_symbolic_batch() -> None:
    """[N, 5] -> [1, N, 5]: the symbolic axis moved, so where the columns go is not known."""
    _refused(chain(["N", 6], [("Unsqueeze", [0])], 5), "unknown_shape", "Unsqueeze 'u0'")


def test_symbolic_batch_reshape() -> None:
    assert_fold_matches(chain(["N", 6], [("Reshape", [-1, 5, 1, 1])], 5), expect_folded=1)


def test_matmul_add_reshape_bn_composes() -> None:
    """The bias Add folds into the MatMul (now a Gemm) first, the BN into that Gemm next."""
    result = assert_fold_matches(
        chain([3, 6], [("Reshape", [0, 5, 1, 1])], 5, bias=(5,)), expect_folded=2, bn_folded=1
    )
    assert "Gemm 'fc'" in result.report.decisions[-1].message
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Reshape", "Relu"]


@pytest.mark.parametrize("bias", [None, (5,), (1, 1, 5), ()], ids=["none", "c", "11c", "scalar"])
def test_point_cloud_matmul_transpose_bn(bias: tuple[int, ...] | None) -> None:
    """[N, L, K] @ [K, C] -> Transpose -> [N, C, L] -> BN over C."""
    model = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5, bias=bias)
    result = assert_fold_matches(model, expect_folded=1)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["MatMul", "Add", "Transpose", "Relu"]
    assert count_ops(result.model, "BatchNormalization") == 0


def test_nhwc_matmul_to_nchw() -> None:
    model = chain([2, 3, 4, 6], [("Transpose", [0, 3, 1, 2])], 5)
    assert_fold_matches(model, expect_folded=1)


def test_reshape_then_transpose() -> None:
    """onnxruntime's fuse-matmul-bn-with-reshape-and-transpose shape: [1, 5] -> [1, 1, 1, 5] ->
    [1, 5, 1, 1]."""
    moves = [("Reshape", [-1, 1, 1, 5]), ("Transpose", [0, 3, 1, 2])]
    result = assert_fold_matches(chain([1, 6], moves, 5), expect_folded=1)
    message = result.report.decisions[0].message
    assert "(was MatMul) through Reshape 'r0' and Transpose 't1'" in message


def _refused(model: onnx.ModelProto, reason: str, *words: str) -> None:
    result = fold_model(model)
    (decision,) = [d for d in result.report.decisions if d.op == "BatchNormalization"]
    assert decision.reason == reason, decision.message
    for word in words:
        assert word in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_reshape_that_leaves_columns_on_the_last_axis() -> None:
    _refused(chain([1, 6], [("Reshape", [-1, 1, 1, 5])], 5), "not_per_channel", "axis 3")


def test_reshape_that_splits_the_columns() -> None:
    model = chain([3, 6], [("Reshape", [0, 2, 2])], 2, cols=4)
    _refused(model, "not_per_channel", "splits or merges")


def test_bn_over_the_sequence_axis() -> None:
    """Without the Transpose, BN on [N, L, C] normalizes L: not the MatMul's columns."""
    model = chain([2, 7, 6], [("Transpose", [0, 1, 2])], 7)
    _refused(model, "not_per_channel", "axis 2")


def test_unknown_shape() -> None:
    model = chain([3, 6], [("Reshape", [0, 5, 1, 1])], 5)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    _refused(model, "unknown_shape")


def test_non_linear_between_is_the_old_refusal() -> None:
    model = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5, relu=True)
    _refused(model, "unsupported_producer", "it follows Transpose 't0'")


def test_layer_output_also_a_graph_output() -> None:
    model = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5, output_too=True)
    _refused(model, "graph_output", "'m'")


def test_bias_not_per_column() -> None:
    model = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5, bias=(7, 1))
    _refused(model, "not_per_channel", "'bias'")


def test_point_cloud_in_an_if_branch() -> None:
    """A subgraph keeps its own initializers: the new bias goes there, the Add inside it."""
    main = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5)
    body = main.graph
    body.ClearField("input")
    del body.output[:]
    body.output.append(vinfo("y", TensorProto.FLOAT, [2, 5, 7]))
    other = helper.make_graph(
        [
            helper.make_node("Transpose", ["a"], ["y2"], perm=[0, 2, 1]),
            helper.make_node("Slice", ["y2", "s0", "s1", "s2"], ["y"]),
        ],
        "else",
        [],
        [vinfo("y", TensorProto.FLOAT, [2, 5, 7])],
        [tensor("s0", np.array([0])), tensor("s1", np.array([5])), tensor("s2", np.array([1]))],
    )
    call = helper.make_node("If", ["cond"], ["out"], then_branch=body, else_branch=other)
    model = make_model(
        [call],
        [vinfo("a", TensorProto.FLOAT, [2, 7, 6]), vinfo("cond", TensorProto.BOOL, [])],
        [vinfo("out", TensorProto.FLOAT, [2, 5, 7])],
    )
    result = fold_model(model)
    assert result.report.folded == 1, result.report.to_dict()
    then = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["MatMul", "Add", "Transpose", "Relu"]
    feeds = {"a": RNG.normal(0, 1, (2, 7, 6)).astype(np.float32), "cond": np.array(True)}
    want, got = run_ort(model, feeds)[0], run_ort(result.model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_function_body_without_shapes_is_refused() -> None:
    """Function bodies carry no shapes: where the columns go cannot be told."""
    main = chain([2, 7, 6], [("Transpose", [0, 2, 1])], 5)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in main.graph.initializer]
    body = [*consts, *main.graph.node]
    body[-1].output[0] = "out"
    func = helper.make_function(
        "local", "Block", ["a"], ["out"], body, [helper.make_opsetid("", 17)]
    )
    call = helper.make_node("Block", ["a"], ["y"], domain="local", name="call")
    model = make_model(
        [call],
        [vinfo("a", TensorProto.FLOAT, [2, 7, 6])],
        [vinfo("y", TensorProto.FLOAT, [2, 5, 7])],
        functions=[func],
        extra_opsets=[("local", 1)],
    )
    _refused(model, "unknown_shape", "MatMul 'fc'")
