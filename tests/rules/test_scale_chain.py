"""Per-channel Mul/Add "Scale" layers after Conv, ConvTranspose, Gemm and MatMul, before or after a
BN (Caffe and MXNet converters emit BN -> Mul -> Add): folded only when the constant broadcasts
along the channel axis under ONNX's right-aligned rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo
from tests.ortutil import random_feeds, run_ort

RNG = np.random.default_rng(11)


def _check(model: onnx.ModelProto, folded: int, *, left: dict[str, int]) -> onnx.ModelProto:
    """Fold; check the count, the ops left, and that onnxruntime gives the same outputs."""
    result = fold_model(model)
    assert result.report.folded == folded, result.report.to_dict()
    for op, n in left.items():
        assert count_ops(result.model, op) == n, (op, [x.op_type for x in result.model.graph.node])
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(result.model, feeds), strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    return result.model


def _conv(cout: int = 8, cin: int = 4, **attrs: Any) -> tuple[onnx.NodeProto, TensorProto]:
    w = RNG.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
    return helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], **attrs), tensor("w", w)


def test_caffe_scale_after_batchnorm_leaves_one_conv() -> None:
    conv, w = _conv()
    nodes = [
        conv,
        bn_node("c", "bn_out", "bn"),
        helper.make_node("Mul", ["bn_out", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    inits = [
        w,
        *bn_initializers("bn", bn_params(RNG, 8)),
        tensor("gamma", RNG.uniform(-2, 2, (8, 1, 1)).astype(np.float32)),
        tensor("beta", RNG.normal(0, 1, (1, 8, 1, 1)).astype(np.float32)),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, 4, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [2, 8, 6, 6])],
        inits,
    )
    folded = _check(model, 3, left={"BatchNormalization": 0, "Mul": 0, "Add": 0, "Conv": 1})
    assert {n.op_type for n in folded.graph.node} == {"Conv"}
    ops = [d.op for d in fold_model(model).report.decisions]
    assert sorted(ops) == ["Add", "BatchNormalization", "Mul"]


def test_mul_add_without_batchnorm_and_scalar_constants() -> None:
    conv, w = _conv()
    nodes = [
        conv,
        helper.make_node("Mul", ["two", "c"], ["m"]),  # scalar, constant on the left
        helper.make_node("Add", ["m", "shift"], ["y"]),
    ]
    inits = [
        w,
        tensor("two", np.array(2.5, np.float32)),
        tensor("shift", RNG.normal(0, 1, (8, 1, 1)).astype(np.float32)),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [vinfo("y", TensorProto.FLOAT, [1, 8, 5, 5])],
        inits,
    )
    _check(model, 2, left={"Mul": 0, "Add": 0, "Conv": 1})


def test_gemm_and_grouped_convtranspose_scales() -> None:
    b = RNG.normal(0, 0.3, (6, 5)).astype(np.float32)
    gemm = make_model(
        [
            helper.make_node("Gemm", ["x", "b"], ["g"], transB=1, alpha=0.5),
            helper.make_node("Mul", ["g", "s"], ["m"]),
            helper.make_node("Add", ["m", "t"], ["y"]),
        ],
        [vinfo("x", TensorProto.FLOAT, [3, 5])],
        [vinfo("y", TensorProto.FLOAT, [3, 6])],
        [
            tensor("b", b),
            tensor("s", RNG.uniform(0.5, 2, 6).astype(np.float32)),  # [N] on [M, N]: per column
            tensor("t", RNG.normal(0, 1, (1, 6)).astype(np.float32)),
        ],
    )
    _check(gemm, 2, left={"Mul": 0, "Add": 0, "Gemm": 1})
    w = RNG.normal(0, 0.3, (4, 3, 2, 2)).astype(np.float32)  # C_in 4, group 2: C_out 6
    deconv = make_model(
        [
            helper.make_node("ConvTranspose", ["x", "w"], ["d"], group=2, strides=[2, 2]),
            helper.make_node("Mul", ["d", "s"], ["y"]),
        ],
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6, 6])],
        [tensor("w", w), tensor("s", RNG.uniform(-2, 2, (6, 1, 1)).astype(np.float32))],
    )
    _check(deconv, 1, left={"Mul": 0, "ConvTranspose": 1})


def test_constant_broadcasting_along_width_is_not_per_channel() -> None:
    """A (C,) constant on NCHW multiplies along W (right-aligned), even when W == C."""
    conv, w = _conv(cout=6)
    model = make_model(
        [conv, helper.make_node("Mul", ["c", "s"], ["y"])],
        [vinfo("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 6, 6, 6])],
        [w, tensor("s", RNG.uniform(0.5, 2, 6).astype(np.float32))],
    )
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.op == "Mul" and decision.reason == "not_per_channel"
    assert "[6, 1, 1]" in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_shared_conv_output_and_non_scale_muls() -> None:
    conv, w = _conv()
    model = make_model(
        [
            conv,
            helper.make_node("Mul", ["c", "s"], ["y"]),
            helper.make_node("Relu", ["c"], ["r"]),  # also reads the conv output
            helper.make_node("Mul", ["r", "s"], ["y2"]),  # after Relu: not a scale layer
            helper.make_node("Mul", ["r", "r"], ["y3"]),  # no constant side
        ],
        [vinfo("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [vinfo(n, TensorProto.FLOAT, None) for n in ("y", "y2", "y3")],
        [w, tensor("s", RNG.uniform(0.5, 2, (8, 1, 1)).astype(np.float32))],
    )
    result = fold_model(model)
    (decision,) = result.report.decisions  # only the Mul right after the Conv is a candidate
    assert decision.reason == "shared_output" and "Relu" in decision.message
    assert not result.report.changed


@pytest.mark.parametrize("rank", [2, 3])
def test_matmul_bias_add(rank: int) -> None:
    """MatMul + per-column bias becomes a Gemm on 2-D data; on 3-D data it is left alone, silently
    (every transformer has it, and it is not a scale layer)."""
    b = RNG.normal(0, 0.3, (5, 4)).astype(np.float32)
    shape = [3, 5] if rank == 2 else [2, 3, 5]
    model = make_model(
        [helper.make_node("MatMul", ["x", "b"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])],
        [vinfo("x", TensorProto.FLOAT, shape)],
        [vinfo("y", TensorProto.FLOAT, [*shape[:-1], 4])],
        [tensor("b", b), tensor("t", RNG.normal(0, 1, 4).astype(np.float32))],
    )
    if rank == 2:
        _check(model, 1, left={"Gemm": 1, "MatMul": 0, "Add": 0})
    else:
        result = fold_model(model)
        assert result.report.decisions == ()
        assert result.model.SerializeToString() == model.SerializeToString()
