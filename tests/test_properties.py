"""Property tests: random Conv / ConvTranspose / Gemm -> BatchNormalization graphs fold, leave no
BatchNormalization, and compute what the original computes (onnxruntime, ORT_DISABLE_ALL) to a
tight tolerance.

test_engine.py covers Conv/ConvTranspose with groups, kernel, stride and bias; these add padding,
dilations, depthwise layers, rectangular and 1-D kernels, ConvTranspose output_padding, every Gemm
form (transA/transB, alpha, beta, each C shape), and BN statistics with negative gammas, variances
in [0.1, 4] and random epsilons.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.builders import bn_initializers, bn_node, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

#: BNFOLD_PROPERTY_EXAMPLES=1000 for a long local run.
PROPERTY = settings(
    max_examples=int(os.environ.get("BNFOLD_PROPERTY_EXAMPLES", "40")), deadline=None
)
#: Folded float32 weights are rounded once from exact float64 products: outputs differ from the
#: original's by a few float32 rounding steps of the accumulated sums, no more.
RTOL, ATOL = 1e-5, 1e-5


def _bn_stats(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    gamma = rng.uniform(0.2, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    return {
        "scale": gamma.astype(np.float32),
        "B": rng.normal(0, 1, channels).astype(np.float32),
        "mean": rng.normal(0, 1, channels).astype(np.float32),
        "var": rng.uniform(0.1, 4.0, channels).astype(np.float32),
    }


epsilons = st.one_of(st.sampled_from([1e-5, 1e-3]), st.floats(1e-6, 0.5))


def _check(model: onnx.ModelProto, seed: int) -> None:
    result = assert_fold_matches(model, expect_folded=1, rtol=RTOL, atol=ATOL, seed=seed)
    assert count_ops(result.model, "BatchNormalization") == 0


@st.composite
def conv_layers(draw: st.DrawFn) -> dict[str, Any]:
    spatial = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cin_g = 1 if depthwise else draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    return {
        "spatial": spatial,
        "groups": groups,
        "cin": cin_g * groups,
        "cout": cout_g * groups,
        "cin_g": cin_g,
        "cout_g": cout_g,
        "kernel": kernel,
        "strides": [draw(st.integers(1, 2)) for _ in range(spatial)],
        "dilations": [draw(st.integers(1, 2)) for _ in range(spatial)],
        "pads": [draw(st.integers(0, 2)) for _ in range(2 * spatial)],
        "bias": draw(st.booleans()),
    }


@PROPERTY
@given(layer=conv_layers(), eps=epsilons, seed=st.integers(0, 2**16))
def test_conv_bn(layer: dict[str, Any], eps: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cout = layer["cout"]
    w = rng.normal(0, 0.5, (cout, layer["cin_g"], *layer["kernel"])).astype(np.float32)
    ins = ["x", "w", "b"] if layer["bias"] else ["x", "w"]
    conv = helper.make_node(
        "Conv",
        ins,
        ["c"],
        name="conv",
        group=layer["groups"],
        kernel_shape=layer["kernel"],
        strides=layer["strides"],
        dilations=layer["dilations"],
        pads=layer["pads"],
    )
    inits = [tensor("w", w), *bn_initializers("bn", _bn_stats(rng, cout))]
    if layer["bias"]:
        inits.append(tensor("b", rng.normal(size=cout).astype(np.float32)))
    x = vinfo("x", 1, [1, layer["cin"], *([7] * layer["spatial"])])
    model = make_model(
        [conv, bn_node("c", "y", "bn", epsilon=eps)], [x], [vinfo("y", 1, None)], inits
    )
    _check(model, seed)


@PROPERTY
@given(layer=conv_layers(), eps=epsilons, seed=st.integers(0, 2**16), data=st.data())
def test_convtranspose_bn(
    layer: dict[str, Any], eps: float, seed: int, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    cout = layer["cout"]
    # output_padding must be smaller than the stride (onnxruntime; ONNX also allows the dilation)
    output_padding = [data.draw(st.integers(0, s - 1)) for s in layer["strides"]]
    w = rng.normal(0, 0.5, (layer["cin"], layer["cout_g"], *layer["kernel"])).astype(np.float32)
    ins = ["x", "w", "b"] if layer["bias"] else ["x", "w"]
    node = helper.make_node(
        "ConvTranspose",
        ins,
        ["c"],
        name="convt",
        group=layer["groups"],
        kernel_shape=layer["kernel"],
        strides=layer["strides"],
        dilations=layer["dilations"],
        pads=layer["pads"],
        output_padding=output_padding,
    )
    inits = [tensor("w", w), *bn_initializers("bn", _bn_stats(rng, cout))]
    if layer["bias"]:
        inits.append(tensor("b", rng.normal(size=cout).astype(np.float32)))
    x = vinfo("x", 1, [1, layer["cin"], *([5] * layer["spatial"])])
    model = make_model(
        [node, bn_node("c", "y", "bn", epsilon=eps)], [x], [vinfo("y", 1, None)], inits
    )
    _check(model, seed)


@PROPERTY
@given(
    m=st.integers(1, 4),
    k=st.integers(1, 6),
    n=st.integers(1, 6),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5, -1.25, 3.0]),
    beta=st.sampled_from([1.0, 0.0, -0.5, 2.0]),
    c_shape=st.sampled_from(["none", "scalar", "one", "n", "1n", "mn"]),
    eps=epsilons,
    seed=st.integers(0, 2**16),
)
def test_gemm_bn(
    m: int, k: int, n: int, trans_a: bool, trans_b: bool, alpha: float, beta: float,
    c_shape: str, eps: float, seed: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    b = rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
    shapes = {"scalar": (), "one": (1,), "n": (n,), "1n": (1, n), "mn": (m, n)}
    ins = ["a", "w"]
    inits = [tensor("w", b), *bn_initializers("bn", _bn_stats(rng, n))]
    if c_shape != "none":
        ins.append("c0")
        inits.append(tensor("c0", rng.normal(size=shapes[c_shape]).astype(np.float32)))
    gemm = helper.make_node(
        "Gemm", ins, ["g"], name="gemm", alpha=alpha, beta=beta, transA=int(trans_a),
        transB=int(trans_b),
    )  # fmt: skip
    a = vinfo("a", 1, [k, m] if trans_a else [m, k])
    model = make_model(
        [gemm, bn_node("g", "y", "bn", epsilon=eps)], [a], [vinfo("y", 1, [m, n])], inits
    )
    _check(model, seed)
