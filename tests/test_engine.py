"""The engine around the rules: chains, look-through, shared weights, subgraphs, functions,
mixed dtypes, idempotence, determinism, and files with external data."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from bnfold import UsageError, fold_file, fold_model
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

C = 4


def conv_node(x: str, w: str, out: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [out], name=name, pads=[1, 1, 1, 1])


def x_in(c: int = 3) -> onnx.ValueInfoProto:
    return vinfo("x", TensorProto.FLOAT, [1, c, 5, 5])


def weights(seed: int, cout: int = C, cin: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32)


def params(seed: int, c: int = C) -> list[onnx.TensorProto]:
    return bn_initializers(f"p{seed}", bn_params(np.random.default_rng(seed), c))


def bn(x: str, y: str, seed: int) -> onnx.NodeProto:
    return bn_node(x, y, f"p{seed}", name=f"bn{seed}")


def test_chain_conv_bn_bn() -> None:
    nodes = [conv_node("x", "w", "c", "conv"), bn("c", "b", 1), bn("b", "y", 2)]
    m = make_model(
        nodes, [x_in()], [vinfo("y", 1, None)], [tensor("w", weights(0)), *params(1), *params(2)]
    )
    result = assert_fold_matches(m, expect_folded=2)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_through_identity_and_per_channel_add() -> None:
    nodes = [
        conv_node("x", "w", "c", "conv"),
        helper.make_node("Identity", ["c"], ["i"], name="id"),
        helper.make_node("Add", ["i", "chan"], ["a"], name="add"),
        bn("a", "y", 1),
    ]
    chan = np.random.default_rng(3).normal(size=(C, 1, 1)).astype(np.float32)
    m = make_model(
        nodes,
        [x_in()],
        [vinfo("y", 1, None)],
        [tensor("w", weights(0)), tensor("chan", chan), *params(1)],
    )
    result = assert_fold_matches(m, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    assert result.report.decisions[0].through == ("Identity", "Add")


def test_shared_weights_are_never_edited_in_place() -> None:
    """Two Convs read one weight; each has its own BN. Folding must give each its own copy."""
    nodes = [
        conv_node("x", "w", "c1", "conv1"),
        conv_node("x", "w", "c2", "conv2"),
        bn("c1", "y1", 1),
        bn("c2", "y2", 2),
        conv_node("x", "w", "y3", "conv3"),  # no BN: must keep seeing the original weight
    ]
    w = weights(0)
    m = make_model(
        nodes,
        [x_in()],
        [vinfo("y1", 1, None), vinfo("y2", 1, None), vinfo("y3", 1, None)],
        [tensor("w", w), *params(1), *params(2)],
    )
    result = assert_fold_matches(m, expect_folded=2)
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    by_name = {n.name: n for n in result.model.graph.node}
    np.testing.assert_array_equal(inits[by_name["conv3"].input[1]], w)
    names = [by_name[c].input[1] for c in ("conv1", "conv2", "conv3")]
    assert len(set(names)) == 3, "each folded conv needs its own weight"
    assert len(inits) == len(result.model.graph.initializer), "initializer names must be unique"


def test_fold_inside_if_branches_and_functions() -> None:
    def branch(tag: str, seed: int) -> onnx.GraphProto:
        w = tensor(f"w{tag}", weights(seed))
        nodes = [conv_node("x", f"w{tag}", f"c{tag}", f"conv{tag}"), bn(f"c{tag}", f"y{tag}", seed)]
        return helper.make_graph(nodes, tag, [], [vinfo(f"y{tag}", 1, None)], [w, *params(seed)])

    if_node = helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=branch("t", 1), else_branch=branch("e", 2)
    )
    fn_params = bn_params(np.random.default_rng(5), C)
    consts = [
        helper.make_node("Constant", [], [n], name=f"k_{n}", value=tensor(n, a))
        for n, a in [("fw", weights(5)), *((f"p5_{k}", v) for k, v in fn_params.items())]
    ]
    body = [*consts, conv_node("x", "fw", "c", "conv"), bn("c", "y", 5)]
    fn = helper.make_function("local", "ConvBN", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    call = helper.make_node("ConvBN", ["x"], ["z"], domain="local", name="call")
    m = make_model(
        [if_node, call],
        [x_in(), vinfo("cond", TensorProto.BOOL, [])],
        [vinfo("y", 1, None), vinfo("z", 1, None)],
        functions=[fn],
        extra_opsets=[("local", 1)],
    )
    result = fold_model(m)
    assert result.report.folded == 3 and count_ops(result.model, "BatchNormalization") == 0
    graphs = sorted(d.graph for d in result.report.decisions)
    assert graphs[0] == "function:local.ConvBN" and all(g.startswith("main/") for g in graphs[1:])
    from tests.ortutil import run_ort

    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32),
                 "cond": np.array(cond)}  # fmt: skip
        for want, got in zip(run_ort(m, feeds), run_ort(result.model, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bn15_float16_data_with_float32_statistics() -> None:
    """BN-15 allows float32 statistics on float16 data; the folded model must stay valid."""
    w = weights(0).astype(np.float16)
    p = bn_params(np.random.default_rng(1), C)  # float32
    nodes = [conv_node("x", "w", "c", "conv"), bn_node("c", "y", "bn")]
    m = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT16, [1, 3, 5, 5])],
        [vinfo("y", TensorProto.FLOAT16, [1, C, 5, 5])],
        [tensor("w", w), *bn_initializers("bn", p)],
        opset=15,
    )
    result = assert_fold_matches(m, expect_folded=1, rtol=1e-2, atol=2e-3)
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}


def test_bfloat16_weights_are_float64_math_rounded_once() -> None:
    w = weights(0).astype(ml_dtypes.bfloat16)
    p = {k: v.astype(ml_dtypes.bfloat16) for k, v in bn_params(np.random.default_rng(1), C).items()}
    nodes = [conv_node("x", "w", "c", "conv"), bn_node("c", "y", "bn")]
    m = make_model(
        nodes,
        [vinfo("x", TensorProto.BFLOAT16, [1, 3, 5, 5])],
        [vinfo("y", TensorProto.BFLOAT16, None)],
        [tensor("w", w), *bn_initializers("bn", p)],
    )
    result = fold_model(m)
    assert result.report.folded == 1
    conv = result.model.graph.node[0]
    new_w = next(
        numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == conv.input[1]
    )
    s = p["scale"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + 1e-5)
    exact = w.astype(np.float64) * s.reshape(-1, 1, 1, 1)
    # correctly rounded: no bfloat16 value is closer to the exact product than the one chosen
    got = new_w.astype(np.float64)
    err = np.abs(got - exact)
    neighbour = np.abs(got * (1 + 2.0**-7) - exact)
    assert np.all(err <= neighbour)
    assert new_w.dtype == ml_dtypes.bfloat16


def test_idempotent_and_deterministic(tmp_path: Path) -> None:
    nodes = [
        conv_node("x", "w", "c", "conv"),
        bn("c", "r", 1),
        helper.make_node("Relu", ["r"], ["q"]),
        bn("q", "y", 2),
    ]
    m = make_model(
        nodes, [x_in()], [vinfo("y", 1, None)], [tensor("w", weights(0)), *params(1), *params(2)]
    )
    once = fold_model(m)
    twice = fold_model(once.model)
    assert twice.report.folded == 0 and twice.report.skipped == 1
    assert twice.model.SerializeToString() == once.model.SerializeToString()
    assert fold_model(m).model.SerializeToString() == once.model.SerializeToString()
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    fold_file(src, tmp_path / "a.onnx", verify=None)
    fold_file(src, tmp_path / "b.onnx", verify=None)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_external_data_round_trip(tmp_path: Path) -> None:
    nodes = [conv_node("x", "w", "c", "conv"), bn("c", "y", 1)]
    big = np.random.default_rng(0).normal(0, 0.1, (64, 3, 3, 3)).astype(np.float32)
    m = make_model(nodes, [x_in()], [vinfo("y", 1, None)], [tensor("w", big), *params(1, 64)])
    src = tmp_path / "ext.onnx"
    onnx.save_model(m, src, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    result = fold_file(src, out)
    assert result.status == "folded" and result.verification is not None
    assert result.verification.passed
    assert {p.name for p in out.parent.iterdir()} == {"folded.onnx", "folded.onnx.data"}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    loaded = onnx.load(out)  # external data found beside the output
    assert count_ops(loaded, "BatchNormalization") == 0
    with pytest.raises(UsageError):
        fold_file(src, src)


@settings(max_examples=30, deadline=None)
@given(
    cin_g=st.integers(1, 3),
    cout_g=st.integers(1, 3),
    groups=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    bias=st.booleans(),
    transpose=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 1e-1]),
    seed=st.integers(0, 2**16),
)
def test_property_conv_and_convtranspose(
    cin_g: int, cout_g: int, groups: int, k: int, stride: int, bias: bool, transpose: bool,
    eps: float, seed: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    cin, cout = cin_g * groups, cout_g * groups
    wshape = (cin, cout_g, k, k) if transpose else (cout, cin_g, k, k)
    w = rng.normal(0, 0.5, wshape).astype(np.float32)
    p = bn_params(rng, cout)
    p["var"][rng.random(cout) < 0.3] = 0.0  # dead channels: eps alone keeps them finite
    p["scale"][rng.random(cout) < 0.2] *= -1
    op = "ConvTranspose" if transpose else "Conv"
    ins = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [
        helper.make_node(op, ins, ["c"], name="layer", group=groups, strides=[stride, stride]),
        bn_node("c", "y", "bn", epsilon=eps),
    ]
    inits = [tensor("w", w), *bn_initializers("bn", p)]
    if bias:
        inits.append(tensor("b", rng.normal(size=cout).astype(np.float32)))
    m = make_model(nodes, [vinfo("x", 1, [1, cin, 5, 5])], [vinfo("y", 1, None)], inits)
    assert_fold_matches(m, expect_folded=1, seed=seed)
