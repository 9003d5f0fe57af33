"""Declared shapes (value_info, graph outputs) are claims of an untrusted file: a fold is decided
on the shapes the graph itself determines, and a declared shape that contradicts them refuses the
fold (``declared_shape_conflict``) instead of deciding it. Under ``--no-verify`` a lie must not
produce a wrong model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold import fold_model
from bnfold.cli.app import app
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import random_feeds, run_ort

RNG = np.random.default_rng(19)
Dims = list[int]


def matmul_reshape_bn(lies: dict[str, Dims]) -> onnx.ModelProto:
    """MatMul [1, 6, 6] @ [6, 6] -> 'm' -> Reshape to [1, 6, 6] (a no-op) -> 'r' -> BN(6): BN's
    axis 1 is the MatMul's rows, not its columns, so nothing folds. ``lies`` are value_info."""
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", RNG.normal(0, 0.5, (6, 6)).astype(np.float32)),
        tensor("target", np.array([1, 6, 6], dtype=np.int64)),
        *bn_initializers("bn", bn_stats(RNG, 6)),
    ]
    return make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6])],
        inits,
        value_info=[vinfo(name, TensorProto.FLOAT, dims) for name, dims in lies.items()],
    )


def assert_same_outputs(model: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    feeds = random_feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(folded, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def assert_conflict(model: onnx.ModelProto, *words: str) -> None:
    """The BN stays, with the reason; the model is unchanged and computes what it did."""
    before = model.SerializeToString()
    result = fold_model(model)
    (decision,) = [d for d in result.report.decisions if d.op == "BatchNormalization"]
    assert decision.reason == "declared_shape_conflict", decision.message
    for word in words:
        assert word in decision.message
    assert result.report.folded == 0
    assert result.model.SerializeToString() == before
    assert_same_outputs(model, result.model)


LIES: list[dict[str, Dims]] = [
    {"r": [6, 6, 1]},
    {"r": [6, 6]},
    {"r": [6, 6, 1, 1]},
    {"m": [6, 1, 6], "r": [6, 6, 1]},
    {"m": [6, 6], "r": [6, 6]},
]


@pytest.mark.parametrize("lies", LIES, ids=lambda d: " ".join(f"{k}={v}" for k, v in d.items()))
def test_reshape_output_that_lies(lies: dict[str, Dims]) -> None:
    """Each of these made bnfold fold the BN into the MatMul's columns (a wrong or invalid
    model); the graph computes [1, 6, 6] for both values."""
    assert_conflict(matmul_reshape_bn(lies), "its graph computes [1, 6, 6]")


def test_declared_shapes_that_agree_change_nothing() -> None:
    model = matmul_reshape_bn({"m": [1, 6, 6], "r": [1, 6, 6]})
    (decision,) = fold_model(model).report.decisions
    assert (
        decision.reason == "not_per_channel" and "axis 2 of its input [1, 6, 6]" in decision.message
    )


def test_value_info_in_an_if_branch_that_lies() -> None:
    """The same lie inside an If branch (its own value_info), next to a sibling branch."""
    inner = matmul_reshape_bn({"r": [6, 6, 1]})
    body = inner.graph
    body.ClearField("input")
    other = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["y"], name="same")],
        "else",
        [],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6])],
    )
    call = helper.make_node("If", ["c"], ["out"], name="if", then_branch=body, else_branch=other)
    model = make_model(
        [call],
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6]), vinfo("c", TensorProto.BOOL, [])],
        [vinfo("out", TensorProto.FLOAT, [1, 6, 6])],
    )
    before = model.SerializeToString()
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "declared_shape_conflict", decision.message
    assert result.model.SerializeToString() == before


def test_cli_no_verify_writes_no_wrong_model(tmp_path: Path) -> None:
    """``bnfold --no-verify``: exit 0, the BN kept with the reason, and whatever is written
    computes what the input computes."""
    model = matmul_reshape_bn({"r": [6, 6, 1]})
    src, dst = tmp_path / "lie.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = CliRunner().invoke(app, [str(src), "-o", str(dst), "--no-verify", "--json"])
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["models"][0]
    assert entry["report"]["folded"] == 0
    (decision,) = entry["report"]["decisions"]
    assert decision["reason"] == "declared_shape_conflict"
    if dst.exists():
        written = onnx.load(dst)
        assert count_ops(written, "BatchNormalization") == 1
        assert_same_outputs(model, written)


# -- every rule that reads a shape --------------------------------------------------------------


def test_matmul_bn_rank() -> None:
    """MatMul [1, 6, 6] @ [6, 6] -> BN(6) with 'm' declared 2-D: it would become a Gemm on 3-D
    data (matmul_bn's rank check)."""
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), bn_node("m", "y", "bn")]
    inits = [tensor("w", RNG.normal(0, 0.5, (6, 6)).astype(np.float32))]
    inits += bn_initializers("bn", bn_stats(RNG, 6))
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6])],
        inits,
        value_info=[vinfo("m", TensorProto.FLOAT, [6, 6])],
    )
    assert_conflict(model, "'m' with shape [6, 6]")


def test_matmul_scale_layer_rank() -> None:
    """MatMul [1, 6, 6] @ [6, 6] -> Mul([6]) with 'm' declared 2-D: the scale-layer path asks
    the MatMul's rank too; a 3-D MatMul's Mul is not folded (and not reported)."""
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Mul", ["m", "k"], ["y"], name="scale"),
    ]
    inits = [
        tensor("w", RNG.normal(0, 0.5, (6, 6)).astype(np.float32)),
        tensor("k", RNG.uniform(-2, 2, 6).astype(np.float32)),
    ]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6])],
        inits,
        value_info=[vinfo("m", TensorProto.FLOAT, [6, 6])],
    )
    before = model.SerializeToString()
    result = fold_model(model)
    assert result.report.folded == 0, result.report.to_dict()
    assert result.model.SerializeToString() == before


def test_bn_into_matmul_after_it() -> None:
    """Relu -> 'r' (declared [6, 6], really [1, 6, 6]) -> BN(6) -> MatMul: BN normalizes the rows
    L of [1, L, C], which the MatMul after it does not sum over (bn_into_matmul's rank check)."""
    nodes = [
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        bn_node("r", "n", "bn"),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="mm"),
    ]
    inits = [tensor("w", RNG.normal(0, 0.5, (6, 4)).astype(np.float32))]
    inits += bn_initializers("bn", bn_stats(RNG, 6))
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 4])],
        inits,
        value_info=[vinfo("r", TensorProto.FLOAT, [6, 6])],
    )
    assert_conflict(model, "'r' with shape [6, 6]")


def test_bn_flatten_gemm_after_it() -> None:
    """Relu -> 'r' [1, 3, 3] declared [1, 3] -> BN(3) -> Flatten(axis -1) -> Gemm [3, 5]: the
    declared rank makes the Flatten's axis 1, i.e. BN's channels the Gemm's columns; really it
    flattens at axis 2, and BN's channels are the Gemm's rows (flattened_spatial)."""
    nodes = [
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        bn_node("r", "n", "bn"),
        helper.make_node("Flatten", ["n"], ["f"], name="flat", axis=-1),
        helper.make_node("Gemm", ["f", "w"], ["y"], name="fc"),
    ]
    inits = [tensor("w", RNG.normal(0, 0.5, (3, 5)).astype(np.float32))]
    inits += bn_initializers("bn", bn_stats(RNG, 3))
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [1, 3, 3])],
        [vinfo("y", TensorProto.FLOAT, [3, 5])],
        inits,
        value_info=[vinfo("r", TensorProto.FLOAT, [1, 3])],
    )
    assert_conflict(model, "'r' with shape [1, 3]")


def test_split_reshape_that_lies() -> None:
    """Gemm [3, 128] -> Reshape [3, 16, 8] (declared [3, 8, 16]) -> BN(16): the graph folds in
    groups of 8 columns, the declaration says otherwise; neither decides, the BN stays."""
    nodes = [
        helper.make_node("Gemm", ["a", "w"], ["m"], name="fc"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", RNG.normal(0, 0.5, (16, 128)).astype(np.float32)),
        tensor("target", np.array([3, 16, 8], dtype=np.int64)),
        *bn_initializers("bn", bn_stats(RNG, 16)),
    ]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [3, 16])],
        [vinfo("y", TensorProto.FLOAT, [3, 16, 8])],
        inits,
        value_info=[vinfo("r", TensorProto.FLOAT, [3, 8, 16])],
    )
    assert_conflict(model, "'r' with shape [3, 8, 16]")


# -- what inference alone cannot tell ------------------------------------------------------------


def test_declared_shape_is_used_where_inference_knows_nothing() -> None:
    """A Reshape whose target is a graph input: only its declared output shape says [3, 6]; it
    agrees with everything computed, so the MatMul -> Reshape -> BN after it still folds."""
    nodes = [
        helper.make_node("Reshape", ["a", "dims"], ["a2"], name="runtime_reshape"),
        helper.make_node("MatMul", ["a2", "w"], ["m"], name="mm"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", RNG.normal(0, 0.5, (6, 5)).astype(np.float32)),
        tensor("target", np.array([0, 5, 1, 1], dtype=np.int64)),
        *bn_initializers("bn", bn_stats(RNG, 5)),
    ]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [18]), vinfo("dims", TensorProto.INT64, [2])],
        [vinfo("y", TensorProto.FLOAT, [3, 5, 1, 1])],
        inits,
        value_info=[vinfo("a2", TensorProto.FLOAT, [3, 6])],
    )
    result = fold_model(model)
    assert result.report.folded == 1, result.report.to_dict()
    feeds: dict[str, Any] = {
        "a": RNG.normal(0, 1, 18).astype(np.float32),
        "dims": np.array([3, 6], dtype=np.int64),
    }
    np.testing.assert_allclose(
        run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4
    )


def test_same_name_in_sibling_branches() -> None:
    """Two If branches may each have a value 'm': the else branch's [6, 6] is not the then
    branch's [1, 6, 6] (the MatMul there must not become a Gemm on 3-D data)."""
    then = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), bn_node("m", "y", "bn")],
        "then",
        [],
        [vinfo("y", TensorProto.FLOAT, None)],
        [
            tensor("w", RNG.normal(0, 0.5, (6, 6)).astype(np.float32)),
            *bn_initializers("bn", bn_stats(RNG, 6)),
        ],
    )
    other = helper.make_graph(
        [
            helper.make_node("Flatten", ["a"], ["m"], name="flat", axis=2),
            helper.make_node("Relu", ["m"], ["y"], name="relu"),
        ],
        "else",
        [],
        [vinfo("y", TensorProto.FLOAT, None)],
    )
    call = helper.make_node("If", ["c"], ["out"], name="if", then_branch=then, else_branch=other)
    model = make_model(
        [call],
        [vinfo("a", TensorProto.FLOAT, [1, 6, 6]), vinfo("c", TensorProto.BOOL, [])],
        [vinfo("out", TensorProto.FLOAT, None)],
    )
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "not_per_channel" and "rank-3" in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_custom_op_output_keeps_its_declared_shape() -> None:
    """A custom op's output shape can only be declared: inference carries it on to the Gemm
    after it, so Gemm -> Reshape -> BN still folds (as it did when declarations were trusted)."""
    nodes = [
        helper.make_node("Op", ["a"], ["c"], name="custom", domain="custom"),
        helper.make_node("Gemm", ["c", "w"], ["m"], name="fc"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", RNG.normal(0, 0.5, (16, 5)).astype(np.float32)),
        tensor("target", np.array([0, 5, 1, 1], dtype=np.int64)),
        *bn_initializers("bn", bn_stats(RNG, 5)),
    ]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [3, 16])],
        [vinfo("y", TensorProto.FLOAT, [3, 5, 1, 1])],
        inits,
        value_info=[vinfo("c", TensorProto.FLOAT, [3, 16])],
        extra_opsets=[("custom", 1)],
    )
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "folded", decision.message
    assert "through Reshape 'reshape' (its columns are the channels)" in decision.message
