"""Model-local functions whose Conv -> BatchNormalization read the weight and the BN parameters
from the function's inputs: folded per call, with the constants the calls pass (issue 19.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bnfold import Reason, fold_file, fold_model
from tests.builders import bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches, random_feeds, run_ort

C = 4
FORMALS = ["x", "w", "s", "b", "m", "v"]
X = vinfo("x", TensorProto.FLOAT, [1, C, 5, 5])
CUSTOM = [("custom", 1)]


def conv_bn_function(name: str = "ConvBN", *, chain: bool = False) -> onnx.FunctionProto:
    """Conv -> BN (-> BN with the same parameters): weight, scale, B, mean and var are inputs."""
    body = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
    ]
    out = "n"
    if chain:
        body.append(
            helper.make_node("BatchNormalization", ["n", "s", "b", "m", "v"], ["n2"], name="bn2")
        )
        out = "n2"
    body.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return helper.make_function("custom", name, FORMALS, ["y"], body, [helper.make_opsetid("", 17)])


def constants(prefix: str, seed: int, dtype: type = np.float32) -> list[onnx.TensorProto]:
    """A weight and BN statistics (negative gammas, var in [0.1, 4]) named ``{prefix}W``, ..."""
    rng = np.random.default_rng(seed)
    stats = bn_stats(rng, C, dtype)
    w = rng.normal(0, 0.4, (C, C, 3, 3)).astype(dtype)
    return [tensor(f"{prefix}W", w)] + [tensor(f"{prefix}{k}", v) for k, v in stats.items()]


def args(prefix: str) -> list[str]:
    return [f"{prefix}{k}" for k in ("W", "scale", "B", "mean", "var")]


def call(x: str, y: str, name: str, arguments: list[str], op: str = "ConvBN") -> onnx.NodeProto:
    return helper.make_node(op, [x, *arguments], [y], domain="custom", name=name)


def model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    functions: list[onnx.FunctionProto] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
    out: str = "y",
    elem: int = TensorProto.FLOAT,
    size: int = 5,
) -> onnx.ModelProto:
    return make_model(
        nodes,
        inputs or [vinfo("x", elem, [1, C, 5, 5])],
        [vinfo(out, elem, [1, C, size, size])],
        inits,
        functions=functions if functions is not None else [conv_bn_function()],
        extra_opsets=CUSTOM,
    )


def function(m: onnx.ModelProto, name: str) -> onnx.FunctionProto:
    (found,) = [f for f in m.functions if f.name == name]
    return found


def message(result_decisions: tuple[object, ...], graph: str) -> str:
    (d,) = [d for d in result_decisions if getattr(d, "graph", "") == graph]
    return str(d.message)  # type: ignore[attr-defined]


# -- folds -----------------------------------------------------------------------------------


def test_called_once_folds_the_function_itself() -> None:
    m = model([call("x", "y", "c1", args("a"))], constants("a", 1))
    onnx.checker.check_model(m, full_check=True)
    result = assert_fold_matches(m, expect_folded=1)
    out = result.model
    (fn,) = out.functions
    assert fn.name == "ConvBN" and fn.domain == "custom"
    assert [n.op_type for n in fn.node] == ["Conv", "Identity"]
    # the folded weight and the new bias live beside the call, passed in as inputs; the
    # consumed inputs are gone from the function and the call
    assert list(fn.input) == ["x", "aW_bnfolded", "conv_bias_bnfolded"]
    assert list(out.graph.node[0].input) == ["x", "aW_bnfolded", "conv_bias_bnfolded"]
    assert sorted(t.name for t in out.graph.initializer) == ["aW_bnfolded", "conv_bias_bnfolded"]
    assert list(fn.opset_import) == list(m.functions[0].opset_import)
    assert list(out.opset_import) == list(m.opset_import)
    (d,) = result.report.decisions
    assert d.graph == "function:custom.ConvBN" and d.reason == Reason.FOLDED.value
    assert "the call 'c1' in the main graph" in d.message
    # the folded weight is the exact float64 fold, rounded once
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s = inits["ascale"].astype(np.float64) / np.sqrt(inits["avar"].astype(np.float64) + 1e-5)
    want = (inits["aW"].astype(np.float64) * s[:, None, None, None]).astype(np.float32)
    got = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}["aW_bnfolded"]
    np.testing.assert_array_equal(got, want)


def test_two_calls_with_the_same_constants_share_the_folded_function() -> None:
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("a"))]
    result = assert_fold_matches(model(nodes, constants("a", 1)), expect_folded=1)
    (fn,) = result.model.functions
    assert fn.name == "ConvBN" and count_ops(result.model, "BatchNormalization") == 0
    assert [list(n.input)[1:] for n in result.model.graph.node] == [
        ["aW_bnfolded", "conv_bias_bnfolded"]
    ] * 2
    assert "the calls 'c1', 'c2'" in result.report.decisions[0].message


def test_two_calls_with_different_constants_get_a_copy_each() -> None:
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    m = model(nodes, constants("a", 1) + constants("b", 2))
    onnx.checker.check_model(m, full_check=True)  # so the folded model is checked too
    result = assert_fold_matches(m, expect_folded=2, bn_folded=1)  # one BN, folded in two copies
    out = result.model
    assert [f.name for f in out.functions] == ["ConvBN_bnfolded", "ConvBN_bnfolded_1"]
    assert [n.op_type for n in out.graph.node] == ["ConvBN_bnfolded", "ConvBN_bnfolded_1"]
    assert all(f.domain == "custom" for f in out.functions)
    assert all(list(f.opset_import) == list(m.functions[0].opset_import) for f in out.functions)
    assert count_ops(out, "BatchNormalization") == 0
    names = [t.name for t in out.graph.initializer]
    assert len(names) == len(set(names)) == 4  # two folded weights, two new biases
    assert {d.graph for d in result.report.decisions} == {
        "function:custom.ConvBN_bnfolded",
        "function:custom.ConvBN_bnfolded_1",
    }
    assert "a copy of the function" in result.report.decisions[0].message


def test_chain_of_two_batchnorms_in_the_function() -> None:
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    m = model(
        nodes, constants("a", 1) + constants("b", 2), functions=[conv_bn_function(chain=True)]
    )
    result = assert_fold_matches(m, expect_folded=4, bn_folded=2)
    assert sorted(t.name for t in result.model.graph.initializer) == [
        "aW_bnfolded",
        "bW_bnfolded",
        "conv_bias_bnfolded",
        "conv_bias_bnfolded_1",
    ]  # the second fold of each chain changed the first one's tensors in place


def test_mixed_calls_fold_only_the_constant_one() -> None:
    """One call passes initializers, the other a graph input for the scale: the first folds in
    a copy, the function stays as it was for the second, whose BN says why."""
    nodes = [
        call("x", "h", "c1", args("a")),
        call("h", "y", "c2", ["bW", "s_in", "bB", "bmean", "bvar"]),
    ]
    inputs = [X, vinfo("s_in", TensorProto.FLOAT, [C])]
    m = model(nodes, constants("a", 1) + constants("b", 2), inputs=inputs)
    onnx.checker.check_model(m, full_check=True)
    result = assert_fold_matches(m, expect_folded=1, bn_folded=0)
    out = result.model
    assert function(out, "ConvBN") == m.functions[0]  # untouched
    assert [n.op_type for n in out.graph.node] == ["ConvBN_bnfolded", "ConvBN"]
    assert list(out.graph.node[1].input) == list(m.graph.node[1].input)
    skipped = [d for d in result.report.decisions if not d.folded]
    assert [d.reason for d in skipped] == [Reason.NON_CONSTANT_PARAM.value]
    assert skipped[0].graph == "function:custom.ConvBN"
    assert (
        "function custom.ConvBN, and the call 'c2' in the main graph passes 's_in' for it, "
        "which is not a constant: it is a graph input" in skipped[0].message
    )


@pytest.mark.parametrize("where", ["graph_input", "computed"])
def test_call_with_run_time_parameter_is_left_with_a_reason(where: str) -> None:
    extra: list[onnx.NodeProto] = []
    scale = "s_in"
    if where == "computed":
        extra = [helper.make_node("Relu", ["s_in"], ["s2"], name="relu")]
        scale = "s2"
    nodes = [*extra, call("x", "y", "c1", ["aW", scale, "aB", "amean", "avar"])]
    m = model(nodes, constants("a", 1), inputs=[X, vinfo("s_in", TensorProto.FLOAT, [C])])
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.NON_CONSTANT_PARAM.value and d.graph == "function:custom.ConvBN"
    assert "function custom.ConvBN" in d.message and "the call 'c1'" in d.message
    why = "a graph input" if where == "graph_input" else "computed at run time by a Relu node"
    assert why in d.message
    assert result.model.SerializeToString() == before


def test_weight_passed_at_run_time_names_the_call() -> None:
    m = model(
        [call("x", "y", "c1", ["w_in", "ascale", "aB", "amean", "avar"])],
        constants("a", 1),
        inputs=[X, vinfo("w_in", TensorProto.FLOAT, [C, C, 3, 3])],
    )
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.NON_CONSTANT_WEIGHT.value
    assert "the call 'c1' in the main graph passes 'w_in'" in d.message
    assert result.model.SerializeToString() == before


def test_three_calls_two_constant_one_not() -> None:
    nodes = [
        call("x", "h1", "c1", args("a")),
        call("h1", "h2", "c2", ["bW", "s_in", "bB", "bmean", "bvar"]),
        call("h2", "y", "c3", args("c")),
    ]
    inits = constants("a", 1) + constants("b", 2) + constants("c", 3)
    m = model(nodes, inits, inputs=[X, vinfo("s_in", TensorProto.FLOAT, [C])])
    result = assert_fold_matches(m, expect_folded=2, bn_folded=0)
    first, second, third = (n.op_type for n in result.model.graph.node)
    assert second == "ConvBN" and first != third
    assert first.startswith("ConvBN_bnfolded") and third.startswith("ConvBN_bnfolded")


def test_call_inside_an_if_branch() -> None:
    then = helper.make_graph([call("x", "t", "c1", args("a"))], "then", [], [vinfo("t", 1, None)])
    other = helper.make_graph([call("x", "e", "c2", args("b"))], "else", [], [vinfo("e", 1, None)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    inputs = [X, vinfo("cond", TensorProto.BOOL, [])]
    m = model([node], constants("a", 1) + constants("b", 2), inputs=inputs)
    result = fold_model(m)
    assert result.report.folded == 2 and count_ops(result.model, "BatchNormalization") == 0
    onnx.checker.check_model(result.model, full_check=True)
    for cond in (True, False):
        feeds = {
            "x": np.random.default_rng(0).standard_normal((1, C, 5, 5)).astype(np.float32),
            "cond": np.array(cond),
        }
        np.testing.assert_allclose(
            run_ort(result.model, feeds)[0], run_ort(m, feeds)[0], rtol=1e-4, atol=1e-5
        )


def test_batchnorm_in_an_if_inside_the_function() -> None:
    then = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["t"], name="bn"),
        ],
        "then",
        [],
        [vinfo("t", 1, None)],
    )
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [], [])
    other.output.append(vinfo("e", 1, None))
    body = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    fn = helper.make_function(
        "custom", "ConvBN", ["x", "cond", *FORMALS[1:]], ["y"], body, [helper.make_opsetid("", 17)]
    )
    inits = [tensor("aW", np.random.default_rng(0).normal(size=(C, C, 1, 1)).astype(np.float32))]
    inits += constants("a", 1)[1:]
    node = helper.make_node("ConvBN", ["x", "cond", *args("a")], ["y"], domain="custom", name="c")
    m = model([node], inits, functions=[fn], inputs=[X, vinfo("cond", TensorProto.BOOL, [])])
    result = fold_model(m)
    assert result.report.folded == 1
    assert list(result.model.functions[0].input) == ["x", "cond"]
    onnx.checker.check_model(result.model, full_check=True)
    for cond in (True, False):
        feeds = {
            "x": np.random.default_rng(0).standard_normal((1, C, 5, 5)).astype(np.float32),
            "cond": np.array(cond),
        }
        np.testing.assert_allclose(
            run_ort(result.model, feeds)[0], run_ort(m, feeds)[0], rtol=1e-4, atol=1e-5
        )


def test_unrelated_and_omitted_inputs_stay() -> None:
    """Inputs no fold consumes stay inputs (a second Conv's weight; an optional input the call
    omits); only the consumed ones go."""
    fn = conv_bn_function()
    fn.input.extend(["w2", "unused"])
    fn.node[-1].CopyFrom(helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2"))
    inits = [*constants("a", 1), tensor("W2", np.ones((C, C, 1, 1), np.float32))]
    m = model([call("x", "y", "c1", [*args("a"), "W2"])], inits, functions=[fn])
    result = assert_fold_matches(m, expect_folded=1)
    out = result.model
    assert list(out.functions[0].input) == [
        "x",
        "w2",
        "unused",
        "aW_bnfolded",
        "conv_bias_bnfolded",
    ]
    assert list(out.graph.node[0].input) == ["x", "W2", "", "aW_bnfolded", "conv_bias_bnfolded"]


def test_new_function_and_tensor_names_are_unique_model_wide() -> None:
    """Names a fold makes exist nowhere else: not as functions, op types or values."""
    taken = helper.make_function(
        "custom", "ConvBN_bnfolded", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])], []
    )
    taken.opset_import.append(helper.make_opsetid("", 17))
    nodes = [
        call("x", "h", "c1", args("a")),
        call("h", "h2", "c2", args("b")),
        helper.make_node("ConvBN_bnfolded_1", ["h2"], ["h3"], domain="custom", name="op"),
        helper.make_node("Relu", ["h3"], ["y"], name="aW_bnfolded"),
    ]
    fn_op = helper.make_function(
        "custom", "ConvBN_bnfolded_1", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])], []
    )
    fn_op.opset_import.append(helper.make_opsetid("", 17))
    inits = constants("a", 1) + constants("b", 2) + [tensor("conv_bias_bnfolded", np.ones(1))]
    m = model(nodes, inits, functions=[conv_bn_function(), taken, fn_op])
    result = assert_fold_matches(m, expect_folded=2, bn_folded=1)
    out = result.model
    names = [f.name for f in out.functions]
    assert len(names) == len(set(names))
    assert {"ConvBN_bnfolded", "ConvBN_bnfolded_1"} <= set(names)
    made = set(names) - {"ConvBN_bnfolded", "ConvBN_bnfolded_1"}
    assert made == {"ConvBN_bnfolded_2", "ConvBN_bnfolded_3"}
    inits_out = [t.name for t in out.graph.initializer]
    assert len(inits_out) == len(set(inits_out))
    assert "conv_bias_bnfolded" in inits_out  # the model's own, unchanged
    assert np.array_equal(
        numpy_helper.to_array(
            next(t for t in out.graph.initializer if t.name == "conv_bias_bnfolded")
        ),
        np.ones(1),
    )


def test_nested_call_with_constants_in_the_calling_function() -> None:
    """A call inside another function whose arguments are Constant nodes there: folded."""
    consts = [
        helper.make_node("Constant", [], [t.name], name=f"k_{t.name}", value=t)
        for t in constants("k", 4)
    ]
    outer = helper.make_function(
        "custom",
        "Outer",
        ["x"],
        ["y"],
        [*consts, call("x", "y", "inner", args("k"))],
        [helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
    )
    m = model(
        [helper.make_node("Outer", ["x"], ["y"], domain="custom", name="outer")],
        [],
        functions=[conv_bn_function(), outer],
    )
    result = assert_fold_matches(m, expect_folded=1)
    (d,) = result.report.decisions
    assert "the call 'inner' in function custom.Outer" in d.message
    out_outer = function(result.model, "Outer")
    assert [n.op_type for n in out_outer.node] == ["Constant", "Constant", "ConvBN"]


def test_nested_call_passing_function_inputs_is_left_with_a_reason() -> None:
    outer = helper.make_function(
        "custom",
        "Outer",
        FORMALS,
        ["y"],
        [call("x", "y", "inner", FORMALS[1:])],
        [helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
    )
    m = model(
        [call("x", "y", "outer", args("a"), op="Outer")],
        constants("a", 1),
        functions=[conv_bn_function(), outer],
    )
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.NON_CONSTANT_PARAM.value
    assert (
        "the call 'inner' in function custom.Outer passes 's' for it, which is not a constant: "
        "it is a function input" in d.message
    )
    assert result.model.SerializeToString() == before


def test_function_that_calls_functions_is_not_copied() -> None:
    """Different constants would need copies; a copy of a function that calls another would give
    the inner calls a second caller, so bnfold leaves it, and says so."""
    helper_fn = helper.make_function(
        "custom", "Pass", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], []
    )
    helper_fn.opset_import.append(helper.make_opsetid("", 17))
    fn = conv_bn_function()
    fn.node[-1].CopyFrom(helper.make_node("Pass", ["n"], ["y"], domain="custom", name="pass"))
    fn.opset_import.append(helper.make_opsetid("custom", 1))
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    m = model(nodes, constants("a", 1) + constants("b", 2), functions=[fn, helper_fn])
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.NON_CONSTANT_PARAM.value
    assert "does not copy a function that calls other model-local functions" in d.message
    assert result.model.SerializeToString() == before
    # called once, it is folded (nothing is copied)
    once = model([call("x", "y", "c1", args("a"))], constants("a", 1), functions=[fn, helper_fn])
    assert_fold_matches(once, expect_folded=1)


def test_attribute_reference_is_refused_and_nothing_changes() -> None:
    fn = conv_bn_function()
    fn.node[1].attribute.append(helper.make_attribute_ref("epsilon", AttributeProto.FLOAT))
    fn.attribute.append("epsilon")
    node = call("x", "y", "c1", args("a"))
    node.attribute.append(helper.make_attribute("epsilon", 1e-3))
    m = model([node], constants("a", 1), functions=[fn])
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.FUNCTION_ATTRIBUTE.value
    assert result.model.SerializeToString() == before


def test_other_attribute_references_are_kept() -> None:
    """A Conv whose dilations come from the function's attributes still folds (they do not
    change the fold); the reference and the calls' attributes stay."""
    fn = conv_bn_function()
    fn.node[0].attribute.append(helper.make_attribute_ref("dilations", AttributeProto.INTS))
    fn.attribute.append("dilations")
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    nodes[0].attribute.append(helper.make_attribute("dilations", [1, 1]))  # 5x5 stays 5x5
    nodes[1].attribute.append(helper.make_attribute("dilations", [2, 2]))  # 5x5 becomes 3x3
    m = model(nodes, constants("a", 1) + constants("b", 2), functions=[fn], size=3)
    result = assert_fold_matches(m, expect_folded=2, bn_folded=1)
    for f in result.model.functions:
        assert [a.ref_attr_name for a in f.node[0].attribute] == ["", "dilations"]  # pads
        assert list(f.attribute) == ["dilations"]
    assert [list(n.attribute) for n in result.model.graph.node] == [
        list(n.attribute) for n in m.graph.node
    ]


def test_a_call_whose_copy_does_not_fold_keeps_the_function() -> None:
    """float16: one call's statistics overflow when folded. That call keeps the function, whose
    BN says why; the other call folds in a copy."""
    bad = constants("b", 2, np.float16)
    for t in bad:
        if t.name == "bscale":
            t.CopyFrom(tensor("bscale", np.full(C, 1e4, np.float16)))
        if t.name == "bvar":
            t.CopyFrom(tensor("bvar", np.zeros(C, np.float16)))
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    m = model(nodes, constants("a", 1, np.float16) + bad, elem=TensorProto.FLOAT16)
    result = assert_fold_matches(m, expect_folded=1, bn_folded=0, rtol=1e-2, atol=1e-2)
    assert function(result.model, "ConvBN") == m.functions[0]
    skipped = [d for d in result.report.decisions if not d.folded]
    assert [(d.graph, d.reason) for d in skipped] == [
        ("function:custom.ConvBN", Reason.NON_FINITE.value)
    ]
    assert "the call 'c2' in the main graph" in skipped[0].message


def test_copies_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnfold.fold import calls

    monkeypatch.setattr(calls, "MAX_COPIES", 1)
    nodes = [
        call("x", "h", "c1", args("a")),
        call("h", "h2", "c2", args("b")),
        call("h2", "y", "c3", args("c")),
    ]
    m = model(nodes, constants("a", 1) + constants("b", 2) + constants("c", 3))
    result = assert_fold_matches(m, expect_folded=1, bn_folded=0)
    assert [n.op_type for n in result.model.graph.node] == ["ConvBN_bnfolded", "ConvBN", "ConvBN"]
    skipped = [d for d in result.report.decisions if not d.folded]
    assert [d.reason for d in skipped] == [Reason.NON_CONSTANT_PARAM.value]
    assert "at most 1 copies" in skipped[0].message and "'c2'" in skipped[0].message


def test_shared_constants_folded_again_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two calls share the weight but not the statistics: each needs its own folded weight. Past
    the limit on such repeated tensors, the second call keeps the function."""
    from bnfold.fold import calls

    monkeypatch.setattr(calls, "MAX_SHARED_BYTES", 0)
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", ["aW", *args("b")[1:]])]
    m = model(nodes, constants("a", 1) + constants("b", 2)[1:])
    result = assert_fold_matches(m, expect_folded=1, bn_folded=0)
    assert [n.op_type for n in result.model.graph.node] == ["ConvBN_bnfolded", "ConvBN"]
    skipped = [d for d in result.report.decisions if not d.folded]
    assert "other calls fold some of the same constants already" in skipped[0].message


def test_folding_again_changes_nothing_and_is_deterministic() -> None:
    nodes = [
        call("x", "h", "c1", args("a")),
        call("h", "y", "c2", ["bW", "s_in", "bB", "bmean", "bvar"]),
    ]
    m = model(
        nodes,
        constants("a", 1) + constants("b", 2),
        inputs=[X, vinfo("s_in", TensorProto.FLOAT, [C])],
    )
    once = fold_model(m)
    assert once.report.folded == 1
    twice = fold_model(once.model)
    assert twice.report.folded == 0
    assert twice.model.SerializeToString() == once.model.SerializeToString()
    assert fold_model(m).model.SerializeToString() == once.model.SerializeToString()


def test_uncalled_function_is_left_as_it_was() -> None:
    m = model([helper.make_node("Relu", ["x"], ["y"])], [])
    before = m.SerializeToString()
    result = fold_model(m)
    (d,) = result.report.decisions
    assert d.reason == Reason.NON_CONSTANT_PARAM.value
    assert d.message == "its scale 's' is not a constant: it is a function input"
    assert result.model.SerializeToString() == before


@pytest.mark.parametrize("external", [False, True])
def test_fold_file_keeps_folded_weights_in_the_main_graph(tmp_path: Path, external: bool) -> None:
    """Through the file path (weights in the tensor store, external data): the folded tensors
    are main-graph initializers, written external like the rest, and the output verifies."""
    nodes = [call("x", "h", "c1", args("a")), call("h", "y", "c2", args("b"))]
    m = model(nodes, constants("a", 1) + constants("b", 2))
    src = tmp_path / "m.onnx"
    if external:
        onnx.save_model(m, src, save_as_external_data=True, location="m.data", size_threshold=0)
    else:
        onnx.save(m, src)
    out = tmp_path / "out" / "f.onnx"
    out.parent.mkdir()
    result = fold_file(src, out)
    assert result.status == "folded" and result.verification is not None
    assert result.verification.passed and result.report.folded == 2
    folded = onnx.load(out)
    assert count_ops(folded, "BatchNormalization") == 0
    if external:
        assert all(
            t.data_location == TensorProto.EXTERNAL
            for t in onnx.load(out, load_external_data=False).graph.initializer
        )
    original = onnx.load(src)
    feeds = random_feeds(original)
    np.testing.assert_allclose(
        run_ort(folded, feeds)[0], run_ort(original, feeds)[0], rtol=1e-4, atol=1e-5
    )
    in_memory = fold_model(original).model
    assert folded.functions == in_memory.functions
    assert folded.graph.node == in_memory.graph.node


def test_two_functions_folding_one_weight_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two functions, each called once, share a weight: each would fold its own copy of it. The
    limit on such repeated tensors holds for functions folded in place too."""
    from bnfold.fold import calls

    monkeypatch.setattr(calls, "MAX_SHARED_BYTES", 0)
    nodes = [
        call("x", "h", "c1", args("a"), op="F"),
        call("h", "y", "c2", ["aW", *args("b")[1:]], op="G"),
    ]
    functions = [conv_bn_function("F"), conv_bn_function("G")]
    m = model(nodes, constants("a", 1) + constants("b", 2)[1:], functions=functions)
    result = assert_fold_matches(m, expect_folded=1)
    assert function(result.model, "G") == m.functions[1]
    (skipped,) = [d for d in result.report.decisions if not d.folded]
    assert skipped.graph == "function:custom.G"
    assert "the call 'c2' in the main graph passes the constant 'bscale'" in skipped.message
