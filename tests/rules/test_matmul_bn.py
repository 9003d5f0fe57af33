"""MatMul (constant 2-D weight) [-> Add constant bias] -> BN becomes one Gemm."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches


def matmul_bn(*, add: str | None, a_rank: int = 2, dtype: type = np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    k, n = 6, 5
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="matmul")]
    inits = [tensor("w", rng.normal(0, 0.5, (k, n)).astype(dtype))]
    x = "m"
    if add is not None:
        shape = {"n": (n,), "1n": (1, n), "scalar": ()}[add]
        inits.append(tensor("bias", rng.normal(0, 0.5, shape).astype(dtype)))
        nodes.append(helper.make_node("Add", ["m", "bias"], ["ma"], name="add"))
        x = "ma"
    nodes.append(bn_node(x, "y", "bn"))
    inits += bn_initializers("bn", bn_params(rng, n, dtype))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    a_shape: list[int | str | None] = ["N", k] if a_rank == 2 else [2, 3, k]
    return make_model(nodes, [vinfo("a", elem, a_shape)], [vinfo("y", elem, None)], inits)


@pytest.mark.parametrize("add", [None, "n", "1n", "scalar"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_matmul_bn(add: str | None, dtype: type) -> None:
    tols: dict[type, tuple[float, float]] = {
        np.float32: (1e-4, 1e-5),
        np.float64: (1e-10, 1e-12),
        np.float16: (1e-2, 1e-2),
    }
    tol = tols[dtype]
    result = assert_fold_matches(
        matmul_bn(add=add, dtype=dtype), expect_folded=1, rtol=tol[0], atol=tol[1]
    )
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]


def test_rank3_matmul_is_not_per_channel() -> None:
    """On a [B, T, C] MatMul output BN's channel axis is T, not the weight's output features."""
    model = matmul_bn(add=None, a_rank=3)
    model.graph.node[-1].input[0] = "m"
    rng = np.random.default_rng(0)
    for t in list(model.graph.initializer):
        if t.name.startswith("bn_"):
            model.graph.initializer.remove(t)
    model.graph.initializer.extend(bn_initializers("bn", bn_params(rng, 3)))
    result = assert_fold_matches(model, expect_folded=0)
    assert result.report.decisions[0].reason == "not_per_channel"
