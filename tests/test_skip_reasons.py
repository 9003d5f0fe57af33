"""One model per reason a BatchNormalization must stay: exact code, BN kept, nothing changed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

from bnfold import Reason, fold_model
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo

C = 4
RNG = np.random.default_rng(11)
W = RNG.normal(0, 0.5, (C, 3, 1, 1)).astype(np.float32)
X = vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])
Y = vinfo("y", TensorProto.FLOAT, [1, C, 4, 4])


def conv(x: str = "x", out: str = "c", w: str = "w") -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [out], name="conv")


def base(
    nodes: list[onnx.NodeProto],
    *,
    params: dict[str, np.ndarray] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    weight: bool = True,
    **kw: object,
) -> onnx.ModelProto:
    inits = ([tensor("w", W)] if weight else []) + bn_initializers(
        "bn", params if params is not None else bn_params(np.random.default_rng(0), C)
    )
    return make_model(nodes, inputs or [X], outputs or [Y], inits, **kw)  # type: ignore[arg-type]


def training_mode() -> onnx.ModelProto:
    return base([conv(), bn_node("c", "y", "bn", training_mode=1)], opset=15)


def extra_outputs() -> onnx.ModelProto:
    node = helper.make_node(
        "BatchNormalization",
        ["c", "bn_scale", "bn_B", "bn_mean", "bn_var"],
        ["y", "rm", "rv", "sm", "sv"],
        name="bn",
    )
    return base([conv(), node], opset=9)


def spatial_mode() -> onnx.ModelProto:
    return base([conv(), bn_node("c", "y", "bn", spatial=0)], opset=7)


def no_producer() -> onnx.ModelProto:
    x = vinfo("x", TensorProto.FLOAT, [1, C, 4, 4])
    return base([bn_node("x", "y", "bn")], inputs=[x], weight=False)


def unsupported_producer() -> onnx.ModelProto:
    relu = helper.make_node("Relu", ["c"], ["r"], name="relu")
    return base([conv(), relu, bn_node("r", "y", "bn")])


def shared_output() -> onnx.ModelProto:
    add = helper.make_node("Add", ["b", "c"], ["y"], name="residual")
    return base([conv(), bn_node("c", "b", "bn"), add])


def graph_output() -> onnx.ModelProto:
    return base([conv(), bn_node("c", "y", "bn")], outputs=[Y, vinfo("c", 1, [1, C, 4, 4])])


def non_constant_param() -> onnx.ModelProto:
    m = base([conv(), bn_node("c", "y", "bn")])
    m.graph.input.append(vinfo("bn_scale", TensorProto.FLOAT, [C]))  # overridable (IR 8)
    return m


def non_constant_param_computed() -> onnx.ModelProto:
    """The scale is computed at run time from a graph input."""
    relu = helper.make_node("Relu", ["s_in"], ["s2"], name="relu")
    bn = bn_node("c", "y", "bn")
    bn.input[1] = "s2"
    return base([relu, conv(), bn], inputs=[X, vinfo("s_in", TensorProto.FLOAT, [C])])


def non_constant_param_function_call() -> onnx.ModelProto:
    """Inside a function the parameters are its inputs; its only call passes a graph input for
    the scale (the message names the function and the call)."""
    body = [conv(), bn_node("c", "y", "bn")]
    formals = ["x", "w", "bn_scale", "bn_B", "bn_mean", "bn_var"]
    fn = helper.make_function(
        "local", "ConvBN", formals, ["y"], body, [helper.make_opsetid("", 17)]
    )
    arguments = ["x", "w", "s_in", "bn_B", "bn_mean", "bn_var"]
    call = helper.make_node("ConvBN", arguments, ["y"], domain="local", name="call")
    return base(
        [call],
        inputs=[X, vinfo("s_in", TensorProto.FLOAT, [C])],
        functions=[fn],
        extra_opsets=[("local", 1)],
    )


def non_constant_weight() -> onnx.ModelProto:
    return base(
        [conv(), bn_node("c", "y", "bn")],
        inputs=[X, vinfo("w", TensorProto.FLOAT, [C, 3, 1, 1])],
        weight=False,
    )


def function_attribute() -> onnx.ModelProto:
    params = bn_params(np.random.default_rng(0), C)
    consts = [
        helper.make_node("Constant", [], [n], value=tensor(n, a))
        for n, a in [("w", W)] + [(f"bn_{k}", v) for k, v in params.items()]
    ]
    bn = bn_node("c", "y", "bn")
    bn.attribute.append(helper.make_attribute_ref("epsilon", AttributeProto.FLOAT))
    fn = helper.make_function(
        "local", "ConvBN", ["x"], ["y"], [*consts, conv(), bn],
        [helper.make_opsetid("", 17)], attributes=["epsilon"],
    )  # fmt: skip
    call = helper.make_node("ConvBN", ["x"], ["y"], domain="local", name="call", epsilon=1e-3)
    return make_model([call], [X], [Y], functions=[fn], extra_opsets=[("local", 1)])


def shape_mismatch() -> onnx.ModelProto:
    return base(
        [conv(), bn_node("c", "y", "bn")], params=bn_params(np.random.default_rng(0), C + 1)
    )


def not_per_channel() -> onnx.ModelProto:
    """A bias Add whose constant varies along width is not a per-channel shift."""
    m = base(
        [conv(), helper.make_node("Add", ["c", "wb"], ["a"], name="add"), bn_node("a", "y", "bn")]
    )
    m.graph.initializer.append(tensor("wb", np.arange(4, dtype=np.float32)))  # shape (4,): width
    return m


def unknown_rank() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), bn_node("m", "y", "bn")]
    inits = [tensor("w", rng.normal(size=(3, C)).astype(np.float32))]
    inits += bn_initializers("bn", bn_params(rng, C))
    return make_model(nodes, [vinfo("a", TensorProto.FLOAT, None)], [vinfo("y", 1, None)], inits)


def unsupported_dtype() -> onnx.ModelProto:
    """Opset 14: parameters must have X's type; float16 statistics on float32 data are not legal."""
    params = {k: v.astype(np.float16) for k, v in bn_params(np.random.default_rng(0), C).items()}
    return base([conv(), bn_node("c", "y", "bn")], params=params, opset=14)


def non_finite() -> onnx.ModelProto:
    """float16: gamma 1e4 over sqrt(0 + 1e-5) gives a scale of 3e6, beyond float16's range."""
    w16 = W.astype(np.float16)
    params = {k: v.astype(np.float16) for k, v in bn_params(np.random.default_rng(0), C).items()}
    params["scale"][:] = 1e4
    params["var"][:] = 0
    nodes = [conv(), bn_node("c", "y", "bn")]
    inits = [tensor("w", w16), *bn_initializers("bn", params)]
    x = vinfo("x", TensorProto.FLOAT16, [1, 3, 4, 4])
    return make_model(nodes, [x], [vinfo("y", TensorProto.FLOAT16, [1, C, 4, 4])], inits)


def padded_conv() -> onnx.ModelProto:
    """BN on the graph input, then a Conv with zero padding: neither side can take it."""
    x = vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])
    params = bn_params(np.random.default_rng(0), 3)
    nodes = [bn_node("x", "n", "bn"), helper.make_node("Conv", ["n", "w"], ["y"], pads=[1] * 4)]
    w = tensor("w", RNG.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32))
    return make_model(nodes, [x], [Y], [w, *bn_initializers("bn", params)])


def unknown_shape() -> onnx.ModelProto:
    """BN -> Flatten -> Gemm where nothing says the spatial size is 1."""
    x = vinfo("x", TensorProto.FLOAT, [1, 3, "H", "W"])
    params = bn_params(np.random.default_rng(0), 3)
    nodes = [
        bn_node("x", "n", "bn"),
        helper.make_node("Flatten", ["n"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"]),
    ]
    g = tensor("g", RNG.normal(0, 0.5, (3, 2)).astype(np.float32))
    out = vinfo("y", TensorProto.FLOAT, [1, 2])
    return make_model(nodes, [x], [out], [g, *bn_initializers("bn", params)])


def declared_shape_conflict() -> onnx.ModelProto:
    """MatMul [1, 6, 6] @ [6, 6] -> Reshape to [1, 6, 6] -> BN(6), with value_info claiming the
    Reshape gives [6, 6, 1]: that would put the MatMul's columns on BN's axis 1 (they are on 2)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", rng.normal(size=(6, 6)).astype(np.float32)),
        tensor("target", np.array([1, 6, 6], dtype=np.int64)),
        *bn_initializers("bn", bn_params(rng, 6)),
    ]
    a, y = vinfo("a", TensorProto.FLOAT, [1, 6, 6]), vinfo("y", TensorProto.FLOAT, [1, 6, 6])
    lie = vinfo("r", TensorProto.FLOAT, [6, 6, 1])
    return make_model(nodes, [a], [y], inits, value_info=[lie])


def quantized_weight() -> onnx.ModelProto:
    """The weight's DequantizeLinear scales its input channels (axis 1): no factor per output
    channel fits such a scale."""
    q = RNG.integers(-128, 128, W.shape).astype(np.int8)
    dq = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=1)
    m = base([dq, conv(), bn_node("c", "y", "bn")], weight=False)
    m.graph.initializer.extend([tensor("wq", q), tensor("ws", np.full(3, 0.01, np.float32))])
    return m


def quantized_activation() -> onnx.ModelProto:
    """Conv -> QuantizeLinear -> DequantizeLinear -> BN: what quantize_static makes of a model
    that was not folded first."""
    q = helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["cq"], name="q")
    dq = helper.make_node("DequantizeLinear", ["cq", "s", "zp"], ["cd"], name="dq")
    m = base([conv(), q, dq, bn_node("cd", "y", "bn")])
    m.graph.initializer.extend(
        [tensor("s", np.array(0.05, np.float32)), tensor("zp", np.array(128, np.uint8))]
    )
    return m


CASES: dict[str, tuple[Callable[[], onnx.ModelProto], Reason]] = {
    "training_mode": (training_mode, Reason.TRAINING_MODE),
    "extra_outputs": (extra_outputs, Reason.EXTRA_OUTPUTS),
    "spatial_mode": (spatial_mode, Reason.SPATIAL_MODE),
    "no_producer": (no_producer, Reason.NO_PRODUCER),
    "unsupported_producer": (unsupported_producer, Reason.UNSUPPORTED_PRODUCER),
    "shared_output": (shared_output, Reason.SHARED_OUTPUT),
    "graph_output": (graph_output, Reason.GRAPH_OUTPUT),
    "non_constant_param": (non_constant_param, Reason.NON_CONSTANT_PARAM),
    "non_constant_param_computed": (non_constant_param_computed, Reason.NON_CONSTANT_PARAM),
    "non_constant_param_function_call": (
        non_constant_param_function_call,
        Reason.NON_CONSTANT_PARAM,
    ),
    "non_constant_weight": (non_constant_weight, Reason.NON_CONSTANT_WEIGHT),
    "function_attribute": (function_attribute, Reason.FUNCTION_ATTRIBUTE),
    "shape_mismatch": (shape_mismatch, Reason.SHAPE_MISMATCH),
    "not_per_channel": (not_per_channel, Reason.NOT_PER_CHANNEL),
    "unknown_rank": (unknown_rank, Reason.UNKNOWN_RANK),
    "unsupported_dtype": (unsupported_dtype, Reason.UNSUPPORTED_DTYPE),
    "non_finite": (non_finite, Reason.NON_FINITE),
    "padded_conv": (padded_conv, Reason.PADDED_CONV),
    "unknown_shape": (unknown_shape, Reason.UNKNOWN_SHAPE),
    "declared_shape_conflict": (declared_shape_conflict, Reason.DECLARED_SHAPE_CONFLICT),
    "quantized_weight": (quantized_weight, Reason.QUANTIZED_WEIGHT),
    "quantized_activation": (quantized_activation, Reason.QUANTIZED_ACTIVATION),
}


def test_every_reason_has_a_case() -> None:
    assert {r for _, r in CASES.values()} == set(Reason) - {Reason.FOLDED}


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_reason(case: str) -> None:
    build, reason = CASES[case]
    model = build()
    before = model.SerializeToString()
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.status == "skipped"
    assert decision.reason == reason.value, decision
    assert len(decision.message) > 15  # a sentence for a person, not just the code
    assert count_ops(result.model, "BatchNormalization") == 1
    assert result.model.SerializeToString() == before  # nothing folded: nothing changed
    assert result.report.nodes_before == result.report.nodes_after


def test_ir3_initializer_listed_as_input_is_constant() -> None:
    """Before IR 4 every initializer had to be a graph input; that does not make it overridable."""
    m = non_constant_param()
    m.ir_version = 3
    m.opset_import[0].version = 8
    assert fold_model(m).report.folded == 1
