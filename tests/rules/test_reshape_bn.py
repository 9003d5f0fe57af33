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
PARAMS = ("scale", "B", "mean", "var")


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
    trans_b: bool = False,
    gemm_c: bool = True,
) -> onnx.ModelProto:
    """A [a_shape] @ B [k, cols] [+ bias] -> moves -> BN(channels) -> Relu (a Gemm has
    alpha 0.5, B [cols, k] with ``trans_b``, and a C unless not ``gemm_c``)."""
    inits = [
        tensor("w", RNG.normal(0, 0.5, (cols, k) if trans_b else (k, cols)).astype(np.float32))
    ]
    if layer == "MatMul":
        nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="fc")]
    else:
        c_in = ["gc"] if gemm_c else []
        attrs: dict[str, Any] = {"transB": 1} if trans_b else {}
        nodes = [helper.make_node("Gemm", ["a", "w", *c_in], ["m"], name="fc", alpha=0.5, **attrs)]
        if gemm_c:
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
    """[3, 4] -> [3, 2, 2]: channel c is columns 2c and 2c + 1 (was refused as a split)."""
    model = chain([3, 6], [("Reshape", [0, 2, 2])], 2, cols=4)
    result = assert_fold_matches(model, expect_folded=1)
    assert "(each channel is 2 consecutive columns)" in result.report.decisions[0].message


# -- a column axis split with the channel as its outermost factor (DCGAN generator heads) --------


@pytest.mark.parametrize(
    ("layer", "trans_b", "gemm_c"),
    [("Gemm", False, True), ("Gemm", True, True), ("Gemm", False, False), ("Gemm", True, False),
     ("MatMul", False, False)],
    ids=["gemm", "gemm-transB", "gemm-noC", "gemm-transB-noC", "matmul"],
)  # fmt: skip
@pytest.mark.parametrize("batch", [3, "N"])
@pytest.mark.parametrize("target", [[0, 8, 4, 4], [-1, 8, 4, 4]], ids=str)
def test_linear_reshaped_to_channels_and_pixels(
    layer: str, trans_b: bool, gemm_c: bool, batch: Any, target: list[int]
) -> None:
    """Gemm [N, 128] -> Reshape [N, 8, 4, 4] -> BatchNorm2d(8): channel c owns the contiguous
    columns 16c .. 16c + 15, so each column group scales by s[c]."""
    model = chain(
        [batch, 16], [("Reshape", target)], 8, k=16, cols=128, layer=layer, trans_b=trans_b,
        gemm_c=gemm_c,
    )  # fmt: skip
    result = assert_fold_matches(model, expect_folded=1)
    (decision,) = result.report.decisions
    assert decision.message.endswith(
        "through Reshape 'r0' (each channel is 16 consecutive columns)"
    )
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Reshape", "Relu"]
    gemm = result.model.graph.node[0]
    assert {a.name: a.i for a in gemm.attribute if a.name == "transB"} == (
        {"transB": 1} if trans_b else {}
    )


def test_matmul_bias_add_reshape_split() -> None:
    """MatMul [N, K] @ [K, 128] + bias -> Reshape [N, 8, 16] -> BatchNorm1d(8): the Add folds
    into the MatMul (now a Gemm) first, the BN into that Gemm's column groups next."""
    model = chain([3, 16], [("Reshape", [0, 8, 16])], 8, k=16, cols=128, bias=(128,))
    result = assert_fold_matches(model, expect_folded=2, bn_folded=1)
    assert "(each channel is 16 consecutive columns)" in result.report.decisions[-1].message
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Reshape", "Relu"]


@pytest.mark.parametrize("bias", [None, (128,), ()], ids=["none", "c", "scalar"])
def test_rank3_matmul_split_then_transposed(bias: tuple[int, ...] | None) -> None:
    """[N, L, K] @ [K, 128] -> Reshape [N, L, 8, 16] -> Transpose(0, 2, 1, 3) -> [N, 8, L, 16]:
    the columns' outermost factor ends on axis 1; B's columns scale in groups of 16 and the
    shift goes into the bias Add (created when absent)."""
    moves = [("Reshape", [0, 0, 8, 16]), ("Transpose", [0, 2, 1, 3])]
    model = chain([2, 5, 16], moves, 8, k=16, cols=128, bias=bias)
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == [
        "MatMul", "Add", "Reshape", "Transpose", "Relu",
    ]  # fmt: skip


def test_two_splits_multiply_the_group() -> None:
    """[3, 128] -> [3, 8, 16] -> [3, 2, 4, 16]: channel c is columns 64c .. 64c + 63."""
    moves = [("Reshape", [0, 8, 16]), ("Reshape", [0, 2, 4, 16])]
    result = assert_fold_matches(chain([3, 16], moves, 2, k=16, cols=128), expect_folded=1)
    assert "(each channel is 64 consecutive columns)" in result.report.decisions[0].message


def test_split_with_the_channel_as_an_inner_factor() -> None:
    """[N, 128] -> [N, 16, 8] -> Transpose(0, 2, 1) -> BN(8): channel = column % 8, not a
    contiguous group of columns."""
    moves = [("Reshape", [0, 16, 8]), ("Transpose", [0, 2, 1])]
    model = chain([3, 16], moves, 8, k=16, cols=128, layer="Gemm")
    _refused(
        model, "not_per_channel", "outermost factor on axis 2 of its input [3, 8, 16]",
        "not the outermost factor of the split column axis",
    )  # fmt: skip


@pytest.mark.parametrize("batch", [4, "N"])
def test_split_merged_with_the_batch(batch: Any) -> None:
    """[N, 128] -> [-1, 8, 8]: axis 1 of the output is (2n + column // 64) % 8, which depends on
    the row: the columns' outermost factor is mixed with the batch."""
    model = chain([batch, 16], [("Reshape", [-1, 8, 8])], 8, k=16, cols=128, layer="Gemm")
    _refused(
        model, "not_per_channel", "splits axis 1 (the layer's columns) but mixes",
        "not the outermost factor of the split column axis",
    )  # fmt: skip


def test_reshape_that_merges_the_columns_is_still_refused() -> None:
    """[2, 7, 5] -> [2, 35]: the columns merged with the sequence axis."""
    model = chain([2, 7, 6], [("Reshape", [0, 35])], 35)
    _refused(model, "not_per_channel", "splits or merges axis 2")


def test_split_then_merged_back_is_refused() -> None:
    """[3, 128] -> [3, 8, 16] -> [3, 128]: exact in principle, but a merge: refused."""
    moves = [("Reshape", [0, 8, 16]), ("Reshape", [0, 128])]
    _refused(chain([3, 16], moves, 128, k=16, cols=128), "not_per_channel", "splits or merges")


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


def test_split_fold_is_float64_then_rounded_once() -> None:
    """The folded B and C are exactly W * s[j // 16] and s[j // 16] * (beta_g * C - mean) + beta,
    computed in float64 and rounded once to float32 (column j in channel j // 16)."""
    model = chain([3, 16], [("Reshape", [0, 8, 4, 4])], 8, k=16, cols=128, layer="Gemm")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    result = fold_model(model)
    assert result.report.folded == 1
    gemm = result.model.graph.node[0]
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    gamma, beta, mean, var = (inits[f"bn_{k}"].astype(np.float64) for k in PARAMS)
    s = gamma / np.sqrt(var + np.float64(np.float32(1e-5)))
    s_col, mean_col, beta_col = (np.repeat(v, 16) for v in (s, mean, beta))
    want_b = (inits["w"].astype(np.float64) * s_col[None, :]).astype(np.float32)
    want_c = (s_col * (inits["gc"].astype(np.float64) - mean_col) + beta_col).astype(np.float32)
    np.testing.assert_array_equal(folded[gemm.input[1]], want_b)
    np.testing.assert_array_equal(folded[gemm.input[2]], want_c)


def test_split_into_another_channel_count() -> None:
    model = chain([3, 16], [("Reshape", [0, 8, 16])], 4, k=16, cols=128, layer="Gemm")
    _refused(model, "shape_mismatch", "columns into 8 groups of 16")


# -- computed targets (torch's x.view(x.size(0), ...)) and Shape readers ---------------------------


def _view_size0(
    rest: list[int], *, shape_of: str = "g", channels: int = 8, extra_reader: bool = False
) -> onnx.ModelProto:
    """Gemm [N, 16] -> [N, 128] -> Reshape to Concat(Unsqueeze(Gather(Shape(v), 0)), rest) -> BN:
    the legacy exporter's ``y.view(y.size(0), 8, 4, 4)`` (v is the Gemm's output) and
    ``nn.Unflatten``; ``extra_reader``: the Reshape's output is read by a Shape too."""
    rng = np.random.default_rng(21)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, name="gemm"),
        helper.make_node("Shape", [shape_of], ["gs"], name="shape"),
        helper.make_node("Gather", ["gs", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["g", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    outputs = [vinfo("y", TensorProto.FLOAT, ["N", *rest])]
    if extra_reader:
        nodes.append(helper.make_node("Shape", ["r"], ["rs"], name="shape_r"))
        outputs.append(vinfo("rs", TensorProto.INT64, [len(rest) + 1]))
    inits = [
        tensor("w", rng.normal(0, 0.5, (128, 16)).astype(np.float32)),
        tensor("b", rng.normal(0, 1, 128).astype(np.float32)),
        tensor("zero", np.array(0, np.int64)),
        tensor("ax0", np.array([0], np.int64)),
        tensor("rest", np.array(rest, np.int64)),
        *bn_initializers("bn", bn_stats(rng, channels)),
    ]
    return make_model(nodes, [vinfo("x", TensorProto.FLOAT, ["N", 16])], outputs, inits)


@pytest.mark.parametrize("shape_of", ["g", "x"])
def test_view_with_the_batch_from_a_shape_folds(shape_of: str) -> None:
    """The target's first element is computed; the rest, 8*4*4, is the Gemm's 128 columns, so it
    can only be N: the Reshape keeps the batch. The Shape that reads the Gemm's output reads its
    shape only, which the fold keeps (it was refused as shared_output)."""
    result = assert_fold_matches(_view_size0([8, 4, 4], shape_of=shape_of), expect_folded=1)
    (d,) = result.report.decisions
    assert "each channel is 16 consecutive columns" in d.message
    assert count_ops(result.model, "Shape") == 1
    model = _view_size0([8, 4, 4], shape_of=shape_of)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(
        run_ort(result.model, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_a_computed_target_that_does_not_hold_the_columns_is_refused() -> None:
    """[?, 8, 4, 2] is 64 of the 128 columns: the first element would be 2N, not the batch."""
    model = _view_size0([8, 4, 2])
    _refused(model, "unknown_shape")


def test_a_shape_reading_the_bn_input_is_still_shared() -> None:
    """A Shape reading the Reshape's output (BN's input) would lose its value when the Reshape
    takes over the BN's output: that stays shared_output."""
    _refused(_view_size0([8, 4, 4], extra_reader=True), "shared_output", "Shape 'shape_r'")
