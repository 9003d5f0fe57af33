"""ConvTranspose -> BN: the output channel is axis 1 of W, per group: W is [C_in, C_out/g, k...]."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches


@pytest.mark.parametrize(
    ("cin", "cout", "group"), [(4, 6, 1), (4, 6, 2), (6, 4, 2), (8, 12, 4), (4, 4, 4)]
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [1, 2])
def test_convtranspose_bn(cin: int, cout: int, group: int, bias: bool, rank: int) -> None:
    rng = np.random.default_rng(cin * 10 + cout + group)
    w = rng.normal(0, 0.3, (cin, cout // group, *[2] * rank)).astype(np.float32)
    b = rng.normal(0, 0.3, cout).astype(np.float32)
    params = bn_params(rng, cout)
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w", "b"] if bias else ["x", "w"], ["c"], name="deconv",
            group=group, strides=[2] * rank,
        ),
        bn_node("c", "y", "bn"),
    ]  # fmt: skip
    inits = [tensor("w", w)] + ([tensor("b", b)] if bias else []) + bn_initializers("bn", params)
    model = make_model(nodes, [vinfo("x", 1, [2, cin, *[5] * rank])], [vinfo("y", 1, None)], inits)
    result = assert_fold_matches(model, expect_folded=1)
    (deconv,) = result.model.graph.node
    new_w = next(
        numpy_helper.to_array(t)
        for t in result.model.graph.initializer
        if t.name == deconv.input[1]
    )
    s = params["scale"].astype(np.float64) / np.sqrt(params["var"].astype(np.float64) + 1e-5)
    # output channel o = g * (cout/g) + j lives at W[g*cin/g : (g+1)*cin/g, j]
    per = s.reshape(group, 1, cout // group, *[1] * rank)
    expect = w.astype(np.float64).reshape(group, cin // group, cout // group, *[2] * rank) * per
    np.testing.assert_array_equal(new_w, expect.reshape(w.shape).astype(np.float32))
