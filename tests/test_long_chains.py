"""Long chains of BatchNormalization (and scale Mul/Add) after one layer: all of them fold, in
one pass where the snapshot can follow the layer, and no decision names a node that is gone."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from bnfold.fold import engine
from bnfold.fold.engine import FoldEngine, pass_limit
from bnfold.fold.state import FoldState
from tests.builders import bn_initializers, bn_node, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches

C = 6


def chain_stats(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """var in [0.1, 4], gammas of both signs (the first negative) with |s| near 1, so that a
    chain of hundreds neither overflows nor vanishes; non-zero means and betas."""
    var = rng.uniform(0.1, 4.0, channels)
    gamma = np.sqrt(var + 1e-5) * np.exp(rng.uniform(-0.2, 0.2, channels))
    gamma *= rng.choice([-1.0, 1.0], channels)
    gamma[0] = -abs(gamma[0])
    return {
        "scale": gamma.astype(np.float32),
        "B": rng.normal(0, 0.5, channels).astype(np.float32),
        "mean": rng.normal(0, 0.5, channels).astype(np.float32),
        "var": var.astype(np.float32),
    }


def bn_chain(
    x: str,
    count: int,
    rng: np.random.Generator,
    *,
    scales_every: int = 0,
    rank: int = 4,
    prefix: str = "",
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``count`` BNs after ``x``; with ``scales_every``, an Identity, a per-channel Mul and a
    per-channel Add after every that many BNs. Returns (nodes, initializers, last output)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shape = (C,) + (1,) * (rank - 2)
    for k in range(count):
        p = f"{prefix}{k}"
        nodes.append(bn_node(x, f"b{p}", f"bn{p}"))
        inits += bn_initializers(f"bn{p}", chain_stats(rng, C))
        x = f"b{p}"
        if scales_every and k % scales_every == scales_every - 1:
            factor = rng.uniform(0.8, 1.25, C) * rng.choice([-1.0, 1.0], C)
            inits.append(tensor(f"m{p}", factor.reshape(shape).astype(np.float32)))
            inits.append(tensor(f"a{p}", rng.normal(0, 0.5, shape).astype(np.float32)))
            nodes += [
                helper.make_node("Identity", [x], [f"i{p}"], name=f"id{p}"),
                helper.make_node("Mul", [f"i{p}", f"m{p}"], [f"mu{p}"], name=f"mul{p}"),
                helper.make_node("Add", [f"mu{p}", f"a{p}"], [f"ad{p}"], name=f"add{p}"),
            ]
            x = f"ad{p}"
    return nodes, inits, x


def conv_then_chain(count: int, *, seed: int = 0, scales_every: int = 0) -> onnx.ModelProto:
    """x -> Conv -> ``count`` BNs (and scale layers) -> Relu -> y."""
    rng = np.random.default_rng(seed)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    nodes, inits, last = bn_chain("c", count, rng, scales_every=scales_every)
    nodes.append(helper.make_node("Relu", [last], ["y"], name="act"))
    w = tensor("w", rng.normal(0, 0.4, (C, 3, 3, 3)).astype(np.float32))
    return make_model(
        [conv, *nodes],
        [vinfo("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [vinfo("y", TensorProto.FLOAT, [1, C, 5, 5])],
        [w, *inits],
    )


@pytest.mark.parametrize("count", [100, 300])
def test_chain_of_bns_after_a_conv_folds_whole(count: int) -> None:
    """Was: 64 folded (MAX_PASSES), the other 36 of 100 said 'it follows BatchNormalization'."""
    result = assert_fold_matches(conv_then_chain(count), expect_folded=count)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu"]
    assert {d.message for d in result.report.decisions} == {"folded into Conv 'conv'"}


def test_chain_with_identity_mul_and_add_folds_whole() -> None:
    count = 100
    model = conv_then_chain(count, seed=1, scales_every=7)
    muls = count // 7  # each Add after a Mul folds with the BN after it (as a shift it reads)
    result = assert_fold_matches(model, expect_folded=count + muls, bn_folded=count)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu"]


def test_chain_after_a_gemm_and_a_matmul() -> None:
    rng = np.random.default_rng(2)
    gemm = helper.make_node("Gemm", ["a", "g", "gc"], ["p"], name="gemm", transB=1)
    matmul = helper.make_node("MatMul", ["a", "m"], ["q"], name="matmul")
    first, first_inits, p = bn_chain("p", 120, rng, rank=2, scales_every=11, prefix="p")
    second, second_inits, q = bn_chain("q", 90, rng, rank=2, prefix="q")
    add = helper.make_node("Add", [p, q], ["y"], name="join")
    inits = [
        tensor("g", rng.normal(0, 0.4, (C, 5)).astype(np.float32)),
        tensor("gc", rng.normal(0, 1, C).astype(np.float32)),
        tensor("m", rng.normal(0, 0.4, (5, C)).astype(np.float32)),
    ]
    model = make_model(
        [gemm, matmul, *first, *second, add],
        [vinfo("a", TensorProto.FLOAT, [3, 5])],
        [vinfo("y", TensorProto.FLOAT, [3, C])],
        [*inits, *first_inits, *second_inits],
    )
    result = assert_fold_matches(model, expect_folded=210 + 10, bn_folded=210)
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Gemm", "Add"]


def function_chain(count: int) -> onnx.ModelProto:
    """A local function: Conv (weight in a Constant node) -> ``count`` BNs (Constant params)."""
    rng = np.random.default_rng(3)
    body, inits, _ = bn_chain("c", count, rng)
    consts = [
        helper.make_node("Constant", [], [t.name], name="k_" + t.name, value=t) for t in inits
    ]
    w = tensor("fw", rng.normal(0, 0.4, (C, 3, 1, 1)).astype(np.float32))
    consts.append(helper.make_node("Constant", [], ["fw"], name="k_fw", value=w))
    conv = helper.make_node("Conv", ["fx", "fw"], ["c"], name="conv")
    body[-1].output[0] = "fy"
    opset = [helper.make_opsetid("", 17)]
    func = helper.make_function("local", "ConvChain", ["fx"], ["fy"], [*consts, conv, *body], opset)
    call = helper.make_node("ConvChain", ["x"], ["y"], name="call", domain="local")
    return make_model(
        [call],
        [vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, C, 4, 4])],
        functions=[func],
        extra_opsets=[("local", 1)],
    )


def test_chain_inside_a_function_folds_whole() -> None:
    """In a function body the new bias is a Constant node, inserted when the pass ends; the
    snapshot lists it at once, so the chain folds in one pass there too (was: 64 folded)."""
    result = assert_fold_matches(function_chain(80), expect_folded=80)
    assert count_ops(result.model, "Conv") == 1
    assert count_ops(result.model, "Constant") == 2  # the weight's and the new bias's
    engine = FoldEngine(function_chain(300))
    assert engine.run().folded == 300 and engine.passes == 2


def test_one_pass_folds_a_chain_of_500() -> None:
    """The chain folds in the first pass; the second finds nothing left (was one per BN, each
    pass indexing the whole model again: quadratic)."""
    model = conv_then_chain(500, seed=4)
    engine = FoldEngine(model)
    report = engine.run()
    assert report.folded == 500 and engine.passes == 2
    assert count_ops(model, "BatchNormalization") == 0
    assert pass_limit(conv_then_chain(500, seed=4)) == 1 + 2 * 500


_QUOTED = re.compile(r"'([^']+)'")


def test_no_decision_names_a_node_that_is_gone() -> None:
    """A BN left after a long chain names only what is still in the folded model."""
    model = conv_then_chain(100, seed=5)
    model.graph.node.append(bn_node("y", "z", "tail"))
    model.graph.initializer.extend(
        bn_initializers("tail", chain_stats(np.random.default_rng(6), C))
    )
    model.graph.output[0].CopyFrom(vinfo("z", TensorProto.FLOAT, [1, C, 5, 5]))
    result = fold_model(model)
    graph = result.model.graph
    names = {n.name for n in graph.node} | {o for n in graph.node for o in (*n.input, *n.output)}
    for decision in result.report.decisions:
        if decision.status == "skipped":  # (was: 36 BNs "follow" BNs folded away)
            for name in _QUOTED.findall(decision.message):
                assert name in names, (name, decision.message)
    assert result.report.folded == 100
    (skipped,) = [d for d in result.report.decisions if d.status == "skipped"]
    assert skipped.reason == "unsupported_producer" and "Relu 'act'" in skipped.message


def test_a_pass_that_never_settles_is_a_bug_not_a_silent_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pass_limit`` bounds the passes any model needs; were it wrong, the fold says so rather
    than stop with BNs left and decisions about nodes already gone."""
    monkeypatch.setattr(engine, "pass_limit", lambda model: 1)
    with pytest.raises(RuntimeError, match="bnfold bug: the fold still changed the model"):
        FoldEngine(conv_then_chain(3)).run()


def shared_and_computed_weights() -> onnx.ModelProto:
    """Two Convs share a weight (so folds write new names), a third's weight is computed
    (Cast of a float64 constant) and its BN params come from Constant nodes; a MatMul becomes a
    Gemm; every layer is followed by a chain of BNs and scale layers."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
        helper.make_node("Cast", ["w64"], ["wc"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "wc"], ["c3"], name="conv3"),
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["q"], name="matmul"),
    ]
    inits = [
        tensor("w", rng.normal(0, 0.4, (C, 3, 1, 1)).astype(np.float32)),
        tensor("w64", rng.normal(0, 0.4, (C, 3, 1, 1))),
        tensor("m", rng.normal(0, 0.4, (48, C)).astype(np.float32)),
    ]
    outs = []
    for k, (start, rank) in enumerate([("c1", 4), ("c2", 4), ("c3", 4), ("q", 2)]):
        chain, params, last = bn_chain(start, 12, rng, scales_every=5, rank=rank, prefix=f"{k}_")
        if k == 2:
            nodes += [helper.make_node("Constant", [], [t.name], value=t) for t in params]
        else:
            inits += params
        nodes += chain
        outs.append(vinfo(last, TensorProto.FLOAT, None))
    return make_model(nodes, [vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])], outs, inits)


@pytest.mark.parametrize(
    "build",
    [
        lambda: conv_then_chain(30, scales_every=4),
        lambda: function_chain(20),
        shared_and_computed_weights,
    ],
)
def test_one_pass_writes_the_bytes_of_one_fold_per_pass(
    build: Callable[[], onnx.ModelProto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding a chain in one pass is only faster: the model written is the one folding a BN
    per pass (the old way, kept here by never refreshing the snapshot) wrote, byte for byte."""
    one_pass = fold_model(build())
    report = one_pass.report
    assert_fold_matches(build(), expect_folded=report.folded, bn_folded=report.bn_folded)
    apply = FoldState.apply

    def apply_then_forget(self: FoldState, *args: Any, **kwargs: Any) -> bool:
        apply(self, *args, **kwargs)
        return False

    monkeypatch.setattr(FoldState, "apply", apply_then_forget)
    engine = FoldEngine(build())
    again = engine.run()
    assert engine.passes > 3
    assert again.to_dict() == report.to_dict()
    assert engine.model.SerializeToString() == one_pass.model.SerializeToString()
