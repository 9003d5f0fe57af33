"""Weights and BN parameters made by constant subgraphs (ConstantOfShape, Unsqueeze, Reshape, Cast,
Identity, arithmetic): evaluated exactly as onnxruntime would, folded, and the subgraph removed."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from bnfold.model.constfold import MAX_ELEMENTS, CannotEvaluate, evaluate
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches, run_ort


def _fill(name: str, shape: list[int], value: float, dtype: Any = np.float32) -> list[Any]:
    """ConstantOfShape(shape initializer) -> ``name``, the way Caffe2's exporter writes weights."""
    fill = tensor("", np.array([value], dtype=dtype))
    return [
        tensor(f"{name}__SHAPE", np.array(shape, dtype=np.int64)),
        helper.make_node("ConstantOfShape", [f"{name}__SHAPE"], [name], value=fill),
    ]


def _split(items: list[Any]) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    nodes = [i for i in items if isinstance(i, onnx.NodeProto)]
    inits = [i for i in items if isinstance(i, TensorProto)]
    return nodes, inits


def test_model_zoo_style_constant_of_shape_weights_fold() -> None:
    """Every weight and BN statistic from ConstantOfShape, as in the onnx wheel's light models."""
    parts: list[Any] = []
    parts += _fill("w", [4, 3, 3, 3], 0.02)
    parts += _fill("s", [4], 1.5)
    parts += _fill("b", [4], 0.25)
    parts += _fill("m", [4], 0.1)
    parts += _fill("v", [4], 0.04)
    nodes, inits = _split(parts)
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [vinfo("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
        opset=9,
    )
    result = assert_fold_matches(model, expect_folded=1)
    # the subgraphs that made the weights are gone with what they read
    assert count_ops(result.model, "ConstantOfShape") == 0
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    assert not any(t.name.endswith("__SHAPE") for t in result.model.graph.initializer)


def test_parameters_through_reshape_unsqueeze_cast_and_arithmetic() -> None:
    rng = np.random.default_rng(0)
    var = rng.uniform(0.01, 2, 4)
    nodes = [
        # scale = Unsqueeze(Squeeze(g)) with g of shape [1, 4]; axes as an input (opset 13+)
        helper.make_node("Squeeze", ["g", "ax0"], ["g_sq"]),
        # mean: float64 constant cast to float32
        helper.make_node("Cast", ["m64"], ["mean"], to=TensorProto.FLOAT),
        # var = (v2 * half) + eps_extra
        helper.make_node("Mul", ["v2", "half"], ["v_mul"]),
        helper.make_node("Add", ["v_mul", "eps_extra"], ["var"]),
        # weight: Reshape of a flat constant, then Identity
        helper.make_node("Reshape", ["w_flat", "w_shape"], ["w_r"]),
        helper.make_node("Identity", ["w_r"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g_sq", "beta", "mean", "var"], ["y"]),
    ]
    inits = [
        tensor("g", rng.uniform(-2, 2, (1, 4)).astype(np.float32)),
        tensor("ax0", np.array([0], np.int64)),
        tensor("m64", rng.normal(0, 1, 4)),
        tensor("v2", (2 * var).astype(np.float32)),
        tensor("half", np.array(0.5, np.float32)),
        tensor("eps_extra", np.array(1e-3, np.float32)),
        tensor("w_flat", rng.normal(0, 0.5, 4 * 3 * 3 * 3).astype(np.float32)),
        tensor("w_shape", np.array([4, 3, 3, 3], np.int64)),
        tensor("beta", rng.normal(0, 1, 4).astype(np.float32)),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [2, 4, 4, 4])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    assert {t.name for t in result.model.graph.initializer} == {"w_bnfolded", "w_bias_bnfolded"}


def test_shared_computed_weight_is_not_edited_and_stays_for_its_other_reader() -> None:
    parts = _fill("w", [4, 4, 1, 1], 0.5)
    nodes, inits = _split(parts)
    rng = np.random.default_rng(1)
    for k, p in enumerate(("s", "b", "m")):
        inits.append(tensor(p, rng.normal(0, 1, 4).astype(np.float32) + (k == 0)))
    inits.append(tensor("v", rng.uniform(0.1, 1, 4).astype(np.float32)))
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["c1"]),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["y1"]),
        helper.make_node("Conv", ["y1", "w"], ["y2"]),  # reads the same computed weight
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [vinfo("y2", TensorProto.FLOAT, [1, 4, 3, 3])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != "w" and convs[1].input[1] == "w"
    assert count_ops(result.model, "ConstantOfShape") == 1  # still needed by the second Conv


def test_weight_computed_from_a_graph_input_is_not_a_constant() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("ConstantOfShape", ["xs"], ["w"], value=tensor("", np.ones(1, "f4"))),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        bn_node("c", "y", "bn"),
    ]
    inits = [tensor(f"bn_{p}", np.ones(1, np.float32)) for p in ("scale", "B", "mean", "var")]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 1, 1, 1])],
        [vinfo("y", TensorProto.FLOAT, None)],
        inits,
    )
    decision = fold_model(model).report.decisions[0]
    assert decision.reason == "non_constant_weight"
    assert "ConstantOfShape node from 'xs'" in decision.message
    assert "Shape node from 'x', and it is a graph input" in decision.message


def dynamo_conv_without_bias(dtype: Any = np.float32) -> onnx.ModelProto:
    """torch's dynamo exporter without its optimizer writes a Conv(bias=False) with a bias of
    zeros made at run time: Expand(CastLike(0, x), Expand(Shape(W)[0:1], [1]))."""
    rng = np.random.default_rng(5)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("Shape", ["W"], ["wc"], start=0, end=1),
        helper.make_node("Constant", [], ["one"], value_ints=[1]),
        helper.make_node("Expand", ["wc", "one"], ["bshape"]),
        helper.make_node("Constant", [], ["zero"], value=tensor("", np.array(0.0, np.float32))),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like_x"]),
        helper.make_node("Expand", ["zero_like_x", "bshape"], ["bias"]),
        helper.make_node("Conv", ["x", "W", "bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        bn_node("c", "y", "bn"),
    ]
    inits = [
        tensor("W", rng.normal(0, 0.5, (8, 3, 3, 3)).astype(dtype)),
        *bn_initializers("bn", {k: v.astype(dtype) for k, v in bn_params(rng, 8).items()}),
    ]
    return make_model(
        nodes,
        [vinfo("x", elem, ["N", 3, 6, 6])],
        [vinfo("y", elem, ["N", 8, 6, 6])],
        inits,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_bias_of_zeros_made_from_the_weights_shape_folds(dtype: Any) -> None:
    """Shape reads only the weight's header, CastLike only x's declared type: the bias is a
    constant, the BN folds, and the subgraph that made the zeros goes (it was
    non_constant_weight, "computed at run time by a Expand node", for every such Conv)."""
    result = assert_fold_matches(
        dynamo_conv_without_bias(dtype), expect_folded=1, rtol=1e-3, atol=1e-3
    )
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def _run_single(
    node: onnx.NodeProto, inputs: dict[str, np.ndarray], opset: int, dtype: np.dtype[Any]
) -> np.ndarray:
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    model = make_model(
        [node],
        [],
        [vinfo(node.output[0], elem, None)],
        [tensor(k, v) for k, v in inputs.items()],
        opset=opset,
    )
    return run_ort(model, {})[0]


RNG = np.random.default_rng(7)
A = RNG.normal(0, 3, (2, 3)).astype(np.float32)
B = RNG.normal(0, 3, (3,)).astype(np.float32)


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "opset"),
    [
        ("ConstantOfShape", {"s": np.array([2, 3], np.int64)}, {}, 17),
        ("Unsqueeze", {"a": A, "ax": np.array([-1, 0], np.int64)}, {}, 17),
        ("Unsqueeze", {"a": A}, {"axes": [1]}, 11),
        ("Squeeze", {"a": A[None], "ax": np.array([0], np.int64)}, {}, 17),
        ("Reshape", {"a": A, "sh": np.array([0, -1, 1], np.int64)}, {}, 17),
        ("Cast", {"a": A.astype(np.float64) / 7}, {"to": TensorProto.FLOAT}, 17),
        ("Cast", {"a": np.array([1, 300], np.int64)}, {"to": TensorProto.FLOAT16}, 17),
        ("Flatten", {"a": A[None, :, :, None]}, {"axis": 2}, 17),
        ("Transpose", {"a": A[None]}, {"perm": [2, 0, 1]}, 17),
        ("Concat", {"a": A, "b": A * 2}, {"axis": -1}, 17),
        ("Add", {"a": A, "b": B}, {}, 17),
        ("Sub", {"a": A, "b": B}, {}, 17),
        ("Mul", {"a": A, "b": B}, {}, 17),
        ("Div", {"a": A, "b": B}, {}, 17),
        ("Neg", {"a": A}, {}, 17),
        ("Sqrt", {"a": np.abs(A)}, {}, 17),
        ("Reciprocal", {"a": A}, {}, 17),
        ("Identity", {"a": A}, {}, 17),
        ("Expand", {"a": B, "sh": np.array([2, 1], np.int64)}, {}, 17),
        ("Expand", {"a": np.array(0.5, np.float32), "sh": np.array([4], np.int64)}, {}, 17),
        ("CastLike", {"a": np.array([1, 300], np.int64), "b": B.astype(np.float16)}, {}, 17),
        ("Shape", {"a": A[None]}, {}, 17),
        ("Shape", {"a": A[None]}, {"start": 0, "end": 1}, 17),
        ("Shape", {"a": A[None]}, {"start": -2}, 17),
    ],
)
def test_evaluation_is_bit_identical_to_onnxruntime(
    op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any], opset: int
) -> None:
    node = helper.make_node(op, list(inputs), ["out"], **attrs)
    got = evaluate(node, list(inputs.values()), opset)
    want = _run_single(node, inputs, opset, got.dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_what_is_not_evaluated_says_why() -> None:
    ints = np.array([7, -7], np.int64)
    with pytest.raises(CannotEvaluate, match="only float arithmetic"):
        evaluate(helper.make_node("Div", ["a", "b"], ["o"]), [ints, np.array([2, 2])], 17)
    with pytest.raises(CannotEvaluate, match="too large to evaluate"):
        shape = np.array([MAX_ELEMENTS + 1], np.int64)
        evaluate(helper.make_node("ConstantOfShape", ["s"], ["o"]), [shape], 17)
    with pytest.raises(CannotEvaluate, match="does not evaluate Relu"):
        evaluate(helper.make_node("Relu", ["a"], ["o"]), [A], 17)
    with pytest.raises(CannotEvaluate, match="different element types"):
        evaluate(helper.make_node("Add", ["a", "b"], ["o"]), [A, A.astype(np.float64)], 17)
