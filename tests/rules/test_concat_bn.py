"""Concat -> BN (YOLO BottleneckCSP): the BN splits by channel slice into the layers the Concat
joins, all of them or none."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches, run_ort

RNG = np.random.default_rng(14)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.4, shape).astype(np.float32)


def csp(
    *,
    inner_bn: bool = False,
    axis: int = 1,
    look_through: bool = False,
    shared: bool = False,
    weight_input: bool = False,
    relu_input: bool = False,
    add_after: bool = False,
) -> onnx.ModelProto:
    """x -> cv1 -> Relu -> cv3 [-> BN] ; x -> cv2 ; BN(cat(cv3, cv2)) -> LeakyRelu."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="cv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], name="cv3", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="cv2"),
    ]
    inits = [tensor("w1", _w(4, 4, 1, 1)), tensor("w3", _w(5, 4, 3, 3))]
    inits += [tensor("b3", RNG.normal(0, 1, 5).astype(np.float32))]
    inputs = [vinfo("x", TensorProto.FLOAT, [2, 4, 6, 6])]
    if weight_input:
        inputs.append(vinfo("w2", TensorProto.FLOAT, [3, 4, 1, 1]))
    else:
        inits.append(tensor("w2", _w(3, 4, 1, 1)))
    first = "c3"
    if inner_bn:
        nodes.append(bn_node("c3", "c3n", "inner"))
        inits += bn_initializers("inner", bn_stats(RNG, 5))
        first = "c3n"
    second = "c2"
    if look_through:
        nodes.append(helper.make_node("Identity", ["c2"], ["c2i"], name="ident"))
        nodes.append(helper.make_node("Add", ["c2i", "bias2"], ["c2a"], name="add2"))
        inits.append(tensor("bias2", RNG.normal(0, 1, (3, 1, 1)).astype(np.float32)))
        second = "c2a"
    if relu_input:
        nodes.append(helper.make_node("Relu", ["c2"], ["c2r"], name="relu2"))
        second = "c2r"
    nodes.append(helper.make_node("Concat", [first, second], ["cat"], name="cat", axis=axis))
    channels = 8 if axis in (1, -3) else 5
    bn_in = "cat"
    if add_after:
        nodes.append(helper.make_node("Add", ["cat", "shift"], ["cata"], name="add_after"))
        inits.append(tensor("shift", RNG.normal(0, 1, (8, 1, 1)).astype(np.float32)))
        bn_in = "cata"
    nodes.append(bn_node(bn_in, "n", "bn"))
    nodes.append(helper.make_node("LeakyRelu", ["n"], ["y"], name="act", alpha=0.1))
    inits += bn_initializers("bn", bn_stats(RNG, channels))
    outputs = [vinfo("y", TensorProto.FLOAT, None)]
    if shared:
        outputs.append(vinfo("c2", TensorProto.FLOAT, None))
    if axis == 2:  # join along H: cv3 and cv2 must agree on channels
        inits = [t for t in inits if t.name not in ("w2",)] + [tensor("w2", _w(5, 4, 1, 1))]
    return make_model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize("axis", [1, -3])
def test_concat_bn_splits_into_both_convs(axis: int) -> None:
    result = assert_fold_matches(csp(axis=axis), expect_folded=1)
    (decision,) = result.report.decisions
    assert "folded by channel slices into the 2 layers" in decision.message
    assert count_ops(result.model, "BatchNormalization") == 0
    assert result.model.graph.node[-2].output[0] == "n"  # the Concat writes the BN's output


def test_concat_bn_through_identity_and_add_on_each_side() -> None:
    """An Identity inside a branch is looked through; the Add after the Concat moves the mean."""
    model = csp(look_through=True, add_after=True)
    add2 = next(n for n in model.graph.node if n.name == "add2")
    model.graph.node.remove(add2)  # (a branch's own Add folds as a shift layer by itself)
    next(n for n in model.graph.node if n.op_type == "Concat").input[1] = "c2i"
    result = assert_fold_matches(model, expect_folded=1)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Identity" not in ops and "Add" not in ops


def test_csp_whose_producer_is_conv_bn_folds_both() -> None:
    """The inner Conv -> BN folds first, the outer BN in the next pass."""
    result = assert_fold_matches(csp(inner_bn=True), expect_folded=2)
    assert count_ops(result.model, "BatchNormalization") == 0


def _refused(model: onnx.ModelProto, reason: str, *words: str) -> None:
    result = fold_model(model)
    (decision,) = [d for d in result.report.decisions if d.output == "n"]
    assert decision.reason == reason, decision.message
    for word in words:
        assert word in decision.message
    assert result.model.SerializeToString() == model.SerializeToString()


def test_input_with_another_consumer_is_refused() -> None:
    _refused(csp(shared=True), "graph_output", "input 1 'c2'")


def test_input_read_by_another_node_is_refused() -> None:
    model = csp()
    model.graph.node.append(helper.make_node("Relu", ["c2"], ["z"], name="other"))
    model.graph.output.append(vinfo("z", TensorProto.FLOAT, None))
    _refused(model, "shared_output", "input 1 'c2'", "Relu 'other'")


def test_non_constant_weight_is_refused() -> None:
    _refused(csp(weight_input=True), "non_constant_weight", "graph input")


def test_non_layer_input_is_refused() -> None:
    _refused(csp(relu_input=True), "unsupported_producer", "Relu 'relu2'")


def test_graph_input_into_concat_is_refused() -> None:
    model = csp()
    model.graph.node[4].input[1] = "x"  # cat(cv3, x): x has no layer to take its channels
    _refused(model, "no_producer", "graph input")


def test_concat_on_another_axis_is_refused() -> None:
    _refused(csp(axis=2), "not_per_channel", "along axis 2")


def test_gemm_and_matmul_joined_on_the_last_axis() -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "g", "gc"], ["p"], name="gemm", transB=1),
        helper.make_node("MatMul", ["a", "m"], ["q"], name="matmul"),
        helper.make_node("Concat", ["p", "q"], ["cat"], name="cat", axis=-1),
        bn_node("cat", "y", "bn"),
    ]
    inits = [tensor("g", _w(3, 6)), tensor("gc", RNG.normal(0, 1, 3).astype(np.float32))]
    inits += [tensor("m", _w(6, 4)), *bn_initializers("bn", bn_stats(RNG, 7))]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [5, 6])],
        [vinfo("y", TensorProto.FLOAT, [5, 7])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Gemm", "Concat"]


def test_grouped_convtranspose_and_conv_joined() -> None:
    """A U-Net-like join: upsampled ConvTranspose (group 2) output next to a skip Conv."""
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["up"], name="up", strides=[2, 2], group=2),
        helper.make_node("Conv", ["s", "wc", "bc"], ["skip"], name="skip"),
        helper.make_node("Concat", ["up", "skip"], ["cat"], name="cat", axis=1),
        bn_node("cat", "n", "bn"),
        helper.make_node("Relu", ["n"], ["y"], name="act"),
    ]
    inits = [tensor("wt", _w(4, 3, 2, 2)), tensor("wc", _w(5, 2, 1, 1))]
    inits += [tensor("bc", RNG.normal(0, 1, 5).astype(np.float32))]
    inits += bn_initializers("bn", bn_stats(RNG, 11))
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 3, 3]), vinfo("s", TensorProto.FLOAT, [1, 2, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, [1, 11, 6, 6])],
        inits,
    )
    assert_fold_matches(model, expect_folded=1)


def test_channel_count_that_does_not_add_up() -> None:
    model = csp()
    bn = [t for t in model.graph.initializer if t.name.startswith("bn_")]
    for t in bn:
        model.graph.initializer.remove(t)
    model.graph.initializer.extend(bn_initializers("bn", bn_stats(RNG, 9)))
    _refused(model, "shape_mismatch", "produce 8")


# -- nested Concats: cat(cat(a, b), c) = cat(a, b, c) -------------------------------------------


def _layer(name: str) -> tuple[onnx.NodeProto, list[TensorProto], int]:
    """Spatial layers on x [1, 4, 6, 6] / s [1, 2, 3, 3], each to [1, C, 6, 6]: (node,
    initializers, C). "a": a padded Conv with bias, "b": a grouped strided ConvTranspose, "c": a
    1x1 Conv without bias, "d": a depthwise Conv."""
    if name == "a":
        bias = tensor("ba", RNG.normal(0, 1, 3).astype(np.float32))
        node = helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="ca", pads=[1, 1, 1, 1])
        return node, [tensor("wa", _w(3, 4, 3, 3)), bias], 3
    if name == "b":
        node = helper.make_node(
            "ConvTranspose", ["s", "wb"], ["b"], name="cb", strides=[2, 2], group=2
        )
        return node, [tensor("wb", _w(2, 2, 2, 2))], 4
    if name == "c":
        return (
            helper.make_node("Conv", ["x", "wc"], ["c"], name="cc"),
            [tensor("wc", _w(5, 4, 1, 1))],
            5,
        )
    node = helper.make_node("Conv", ["x", "wd"], ["d"], name="cd", pads=[1, 1, 1, 1], group=4)
    return node, [tensor("wd", _w(4, 1, 3, 3))], 4


def nested(
    tree: tuple,
    *,
    between: str = "",
    inner_axis: int = 1,
    extra_reader: bool = False,
    inner_output: bool = False,
    bn_channels: int | None = None,
) -> onnx.ModelProto:
    """BN(tree) -> Relu, ``tree`` a nest of tuples of layer names ("a".."d"): each tuple a
    Concat on axis 1 (inner ones on ``inner_axis``). ``between`` goes between each inner Concat
    and the Concat that reads it: "identity", "add" (per channel), "scalar" (a [1] constant) or
    "wide" (a [6] constant: along W). ``extra_reader``: a Relu also reads the first inner
    Concat; ``inner_output``: the first inner Concat is a graph output too."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    inner_names: list[str] = []

    def build(node: tuple | str, depth: int) -> tuple[str, int]:
        if isinstance(node, str):
            layer, weights, channels = _layer(node)
            nodes.append(layer)
            inits.extend(weights)
            return node, channels
        parts = [build(child, depth + 1) for child in node]
        name = f"cat{len(inner_names)}" if depth else "cat"
        if depth:
            inner_names.append(name)
        axis = inner_axis if depth else 1
        nodes.append(
            helper.make_node("Concat", [p for p, _ in parts], [name], name=name, axis=axis)
        )
        channels = sum(c for _, c in parts)
        if not depth or not between:
            return name, channels
        if between == "identity":
            nodes.append(helper.make_node("Identity", [name], [name + "_i"], name=name + "_id"))
            return name + "_i", channels
        shape = {"add": (channels, 1, 1), "scalar": (1,), "wide": (6,)}[between]
        inits.append(tensor(name + "_k", RNG.normal(0, 1, shape).astype(np.float32)))
        nodes.append(
            helper.make_node("Add", [name, name + "_k"], [name + "_a"], name=name + "_add")
        )
        return name + "_a", channels

    cat, channels = build(tree, 0)
    nodes.append(bn_node(cat, "n", "bn"))
    nodes.append(helper.make_node("Relu", ["n"], ["y"], name="act"))
    inits += bn_initializers("bn", bn_stats(RNG, bn_channels or channels))
    outputs = [vinfo("y", TensorProto.FLOAT, [1, channels, 6, 6])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", [inner_names[0]], ["z"], name="other"))
        outputs.append(vinfo("z", TensorProto.FLOAT, None))
    if inner_output:
        outputs.append(vinfo(inner_names[0], TensorProto.FLOAT, None))
    inputs = [
        vinfo("x", TensorProto.FLOAT, [1, 4, 6, 6]),
        vinfo("s", TensorProto.FLOAT, [1, 2, 3, 3]),
    ]
    return make_model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize(
    "tree",
    [
        (("a", "b"), "c"),  # 2 levels, inner first
        ("d", ("b", "c")),  # 2 levels, inner last
        ((("a", "b"), "c"), "d"),  # 3 levels
        ("d", ("a", ("b", "c"))),  # 3 levels, inner last at each level
        (("a", "d"), ("b", "c")),  # two inner Concats
    ],
)
@pytest.mark.parametrize("between", ["", "identity", "add", "scalar"])
def test_nested_concat_splits_into_every_layer(tree: tuple, between: str) -> None:
    """Was: unsupported_producer ("it follows Concat 'cat0'")."""
    model = nested(tree, between=between)
    concats = count_ops(model, "Concat")
    result = assert_fold_matches(model, expect_folded=1)
    (decision,) = result.report.decisions
    leaves = str(tree).count("'") // 2
    assert f"folded by channel slices into the {leaves} layers Concat 'cat' joins through" in (
        decision.message
    )
    ops = [n.op_type for n in result.model.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Add" not in ops
    assert ops.count("Concat") == concats  # the Concats stay, each writes what its reader reads
    assert len(ops) == len(model.graph.node) - 1 - (concats - 1) * (1 if between else 0)


def test_nested_gemm_and_matmul_on_the_last_axis() -> None:
    nodes = [
        helper.make_node("Gemm", ["u", "g", "gc"], ["p"], name="gemm", transB=1),
        helper.make_node("MatMul", ["u", "m"], ["q"], name="matmul"),
        helper.make_node("Gemm", ["u", "h"], ["r"], name="gemm2", alpha=0.5),
        helper.make_node("Concat", ["p", "q"], ["pq"], name="inner", axis=-1),
        helper.make_node("Identity", ["pq"], ["pqi"], name="ident"),
        helper.make_node("Concat", ["r", "pqi"], ["cat"], name="cat", axis=1),
        bn_node("cat", "y", "bn"),
    ]
    inits = [tensor("g", _w(3, 6)), tensor("gc", RNG.normal(0, 1, 3).astype(np.float32))]
    inits += [tensor("m", _w(6, 4)), tensor("h", _w(6, 2))]
    inits += bn_initializers("bn", bn_stats(RNG, 9))
    model = make_model(
        nodes,
        [vinfo("u", TensorProto.FLOAT, [5, 6])],
        [vinfo("y", TensorProto.FLOAT, [5, 9])],
        inits,
    )
    result = assert_fold_matches(model, expect_folded=1)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["Gemm", "Gemm", "Gemm", "Concat", "Concat"]


def test_nested_concat_with_its_own_conv_bn_folds_in_two_passes() -> None:
    """A layer -> BN inside the nest folds first; the outer BN then folds on through it."""
    model = nested((("a", "b"), "c"))
    bn_a = bn_node("a", "an", "inner")
    model.graph.node.insert(1, bn_a)
    next(n for n in model.graph.node if n.name == "cat0").input[0] = "an"
    model.graph.initializer.extend(bn_initializers("inner", bn_stats(RNG, 3)))
    result = assert_fold_matches(model, expect_folded=2)
    assert count_ops(result.model, "BatchNormalization") == 0


def test_inner_concat_read_by_another_node_is_refused() -> None:
    """(Two levels: refused so before too, at the outer Concat's input.)"""
    _refused(
        nested((("a", "b"), "c"), extra_reader=True),
        "shared_output",
        "input 0 'cat0' of the Concat 'cat'",
        "Relu 'other'",
    )


def test_innermost_concat_read_by_another_node_is_refused() -> None:
    """Three levels: the innermost Concat 'cat0' is also read by Relu 'other' (was:
    unsupported_producer, "it follows Concat 'cat1'")."""
    _refused(
        nested(("d", ("a", ("b", "c"))), extra_reader=True),
        "shared_output",
        "input 1 'cat1' of the Concat 'cat'",
        "input 1 'cat0' of Concat 'cat1'",
        "Relu 'other'",
    )


def test_a_slice_that_cannot_fold_leaves_every_layer_unchanged() -> None:
    """The last layer's slice overflows float32 (a huge gamma over a tiny variance): the other
    slices, already computed, are not written either."""
    model = nested(("d", ("a", ("b", "c"))))
    for name, value in (("bn_scale", 3e38), ("bn_var", 0.0)):
        param = next(t for t in model.graph.initializer if t.name == name)
        values = onnx.numpy_helper.to_array(param).copy()
        values[-1] = value
        param.CopyFrom(tensor(name, values))
    _refused(model, "non_finite", "input 1 'c' of Concat 'cat0'")


def test_inner_layer_with_a_non_constant_weight_is_refused() -> None:
    model = nested((("a", "b"), "c"))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "wb"))
    model.graph.input.append(vinfo("wb", TensorProto.FLOAT, [2, 2, 2, 2]))
    _refused(model, "non_constant_weight", "input 1 'b' of Concat 'cat0'", "graph input")


def test_inner_concat_read_by_another_node_through_identity_is_refused() -> None:
    model = nested(("d", ("a", ("b", "c"))), between="identity")
    model.graph.node.append(helper.make_node("Relu", ["cat0_i"], ["z"], name="other"))
    model.graph.output.append(vinfo("z", TensorProto.FLOAT, None))
    _refused(model, "shared_output", "'cat0_i' (before it) is also read by Relu 'other'")


def test_inner_concat_as_graph_output_is_refused() -> None:
    _refused(
        nested(("d", ("a", ("b", "c"))), inner_output=True),
        "graph_output",
        "input 1 'cat0' of Concat 'cat1'",
        "'cat0' (before it) is also a graph output",
    )


@pytest.mark.parametrize("axis", [2, -1])
def test_inner_concat_on_another_axis_is_refused(axis: int) -> None:
    """The inner Concat joins two 4-channel layers along H or W (the outer one then cannot
    join it with a [1, 3, 6, 6] layer: the refusal comes first, from the structure alone)."""
    model = nested((("b", "d"), "a"), inner_axis=axis, bn_channels=7)
    _refused(
        model, "not_per_channel", "Concat 'cat0', which feeds Concat 'cat', joins", f"axis {axis}"
    )


def test_nested_channel_count_that_does_not_add_up() -> None:
    _refused(nested((("a", "b"), "c"), bn_channels=11), "shape_mismatch", "produce 12", "has 11")


def test_add_between_concats_along_another_axis_is_refused() -> None:
    _refused(
        nested((("a", "b"), "c"), between="wide"),
        "not_per_channel",
        "input 0 'cat0_a' of the Concat 'cat'",
        "'cat0_k' of shape [6]",
    )


def test_unfoldable_input_of_an_inner_concat_names_it() -> None:
    model = nested((("a", "b"), "c"))
    relu = helper.make_node("Relu", ["b"], ["br"], name="relu_b")
    model.graph.node.insert(2, relu)
    next(n for n in model.graph.node if n.name == "cat0").input[1] = "br"
    _refused(
        model,
        "unsupported_producer",
        "input 0 'cat0' of the Concat 'cat' before it",
        "inside it, input 1 'br' of Concat 'cat0' cannot either",
        "Relu 'relu_b'",
    )


def _deep_nest(depth: int) -> onnx.ModelProto:
    """``depth`` Concats nested in each other, one Conv inside, one BN after them."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    prev = "c"
    for k in range(depth):
        nodes.append(helper.make_node("Concat", [prev], [f"k{k}"], name=f"k{k}", axis=1))
        prev = f"k{k}"
    nodes.append(bn_node(prev, "y", "bn"))
    inits = [tensor("w", _w(3, 4, 1, 1)), *bn_initializers("bn", bn_stats(RNG, 3))]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [vinfo("y", TensorProto.FLOAT, [1, 3, 2, 2])],
        inits,
    )


def test_nests_up_to_the_bound_fold_and_deeper_ones_say_why() -> None:
    """A nest of MAX_INNER_CONCATS Concats in the one before the BN folds; one deeper stays,
    refused in one line that names the bound (3000 deep: no RecursionError, no slow path)."""
    from bnfold.fold.rules.concat_bn import MAX_INNER_CONCATS

    result = fold_model(_deep_nest(MAX_INNER_CONCATS + 1))
    assert result.report.folded == 1
    assert count_ops(result.model, "BatchNormalization") == 0
    for depth in (MAX_INNER_CONCATS + 2, 3000):
        (d,) = fold_model(_deep_nest(depth)).report.decisions
        assert d.reason == "unsupported_producer" and f"at most {MAX_INNER_CONCATS}" in d.message


def test_a_ladder_of_nested_concats_stays_linear() -> None:
    """X_k = BN_k(Concat(X_{k-1}, conv_k)): each BN could fold only after the one before it,
    into every layer before it again. The first ones fold; past the bound the rest stay, and a
    ladder of 400 takes a moment, not minutes (it took ~20 s without the bound)."""
    import time

    from bnfold.fold.rules.concat_bn import MAX_INNER_CONCATS

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0")]
    inits = [tensor("w0", _w(2, 4, 1, 1))]
    prev, channels = "c0", 2
    for k in range(1, 401):
        inits.append(tensor(f"w{k}", _w(2, 4, 1, 1)))
        nodes.append(helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"], name=f"conv{k}"))
        nodes.append(helper.make_node("Concat", [prev, f"c{k}"], [f"k{k}"], name=f"k{k}", axis=1))
        channels += 2
        inits += bn_initializers(f"bn{k}", bn_stats(rng, channels))
        nodes.append(bn_node(f"k{k}", f"y{k}", f"bn{k}", name=f"bn{k}"))
        prev = f"y{k}"
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [vinfo(prev, TensorProto.FLOAT, [1, channels, 2, 2])],
        inits,
    )
    start = time.perf_counter()
    result = fold_model(model)
    assert time.perf_counter() - start < 60  # a bound on the algorithm, not a benchmark
    assert result.report.bn_folded == MAX_INNER_CONCATS + 1
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(
        run_ort(result.model, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4
    )
