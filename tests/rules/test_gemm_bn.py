"""Gemm -> BN: transA/transB, alpha, beta, and C absent, scalar, [N] or [1, N]; float32 and 64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

K, N = 5, 7


def gemm_bn(
    *, trans_a: int, trans_b: int, alpha: float, beta: float, c: str, dtype: type = np.float32
) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    b: np.ndarray = rng.normal(0, 0.5, (N, K) if trans_b else (K, N)).astype(dtype)
    shapes = {"none": None, "scalar": (), "n": (N,), "1n": (1, N)}
    inputs = ["a", "b"]
    inits = [tensor("b", b)]
    if shapes[c] is not None:
        inputs.append("c")
        inits.append(tensor("c", rng.normal(0, 0.5, shapes[c]).astype(dtype)))
    nodes = [
        helper.make_node(
            "Gemm",
            inputs,
            ["g"],
            name="gemm",
            transA=trans_a,
            transB=trans_b,
            alpha=alpha,
            beta=beta,
        ),
        bn_node("g", "y", "bn"),
    ]
    inits += bn_initializers("bn", bn_params(rng, N, dtype))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    a_shape = [K, 3] if trans_a else [3, K]
    return make_model(nodes, [vinfo("a", elem, a_shape)], [vinfo("y", elem, None)], inits)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (2.0, 0.0)])
@pytest.mark.parametrize("c", ["none", "scalar", "n", "1n"])
def test_gemm_bn(trans_a: int, trans_b: int, alpha: float, beta: float, c: str) -> None:
    model = gemm_bn(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, c=c)
    result = assert_fold_matches(model, expect_folded=1)
    (gemm,) = result.model.graph.node
    assert gemm.op_type == "Gemm" and len(gemm.input) == 3


def test_gemm_bn_float64() -> None:
    model = gemm_bn(trans_a=0, trans_b=1, alpha=0.5, beta=2.0, c="n", dtype=np.float64)
    assert_fold_matches(model, expect_folded=1, rtol=1e-10, atol=1e-12)
