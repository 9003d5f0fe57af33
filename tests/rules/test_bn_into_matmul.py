"""BN on the raw features -> MatMul (+ Add): input normalization of an MLP folds into the MatMul
after it, which becomes a Gemm; on [N, L, C] BN normalizes L, not the MatMul's rows: refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

RNG = np.random.default_rng(7)


def mlp(*, add: bool = True, rank: int = 2, dtype: Any = np.float32, weight_input: bool = False):
    k, n = 6, 4
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [bn_node("x", "n", "bn"), helper.make_node("MatMul", ["n", "w"], ["m"], name="fc")]
    features = k if rank == 2 else 3  # rank 3: [N, L=3, C=k], BN over L
    inits = bn_initializers("bn", bn_stats(RNG, features, dtype))
    inputs = [vinfo("x", elem, [5, k] if rank == 2 else [2, 3, k])]
    if weight_input:
        inputs.append(vinfo("w", elem, [k, n]))
    else:
        inits.append(tensor("w", RNG.normal(0, 0.5, (k, n)).astype(dtype)))
    out = "m"
    if add:
        nodes.append(helper.make_node("Add", ["m", "b"], ["a"], name="bias"))
        inits.append(tensor("b", RNG.normal(0, 1, n).astype(dtype)))
        out = "a"
    nodes.append(helper.make_node("Relu", [out], ["y"], name="act"))
    return make_model(nodes, inputs, [vinfo("y", elem, None)], inits)


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(np.float32, 1e-4), (np.float64, 1e-10), (np.float16, 1e-2)]
)
def test_input_bn_into_matmul(add: bool, dtype: Any, tol: float) -> None:
    result = assert_fold_matches(
        mlp(add=add, dtype=dtype), expect_folded=1 + add, bn_folded=1, rtol=tol, atol=tol
    )
    bn = next(d for d in result.report.decisions if d.op == "BatchNormalization")
    assert "into the Gemm 'fc' (was MatMul) after it" in bn.message
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["Gemm", "Relu"]  # a bias Add after it is folded into the Gemm's C too


def test_rank3_input_normalizes_the_sequence_axis() -> None:
    result = fold_model(m := mlp(rank=3))
    (decision,) = [d for d in result.report.decisions if d.op == "BatchNormalization"]
    assert decision.reason == "not_per_channel"
    assert "axis 1 of its rank-3 input" in decision.message
    assert result.model.SerializeToString() == m.SerializeToString()


def test_unknown_rank_is_refused() -> None:
    model = mlp()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    result = fold_model(model)
    (decision,) = [d for d in result.report.decisions if d.op == "BatchNormalization"]
    assert decision.reason == "unknown_rank"
    assert result.model.SerializeToString() == model.SerializeToString()


def test_non_constant_weight_is_refused() -> None:
    result = fold_model(m := mlp(weight_input=True))
    (decision,) = [d for d in result.report.decisions if d.op == "BatchNormalization"]
    assert decision.reason == "non_constant_weight"
    assert result.model.SerializeToString() == m.SerializeToString()


def test_bn_read_by_matmul_as_its_weight_is_not_folded() -> None:
    model = mlp(add=False)
    fc = model.graph.node[1]
    fc.input[0], fc.input[1] = "w2", "n"  # BN output is B, not A
    model.graph.initializer.append(tensor("w2", RNG.normal(0, 1, (3, 5)).astype(np.float32)))
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "no_producer"
