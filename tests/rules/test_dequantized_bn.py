"""DequantizeLinear(integer W) -> Conv/ConvTranspose/Gemm/MatMul -> BN: the BN goes into the
scale, the integer weight keeps its bytes; and what must stay (rules/dequantized.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold_file, fold_model
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches, random_feeds, run_ort
from tests.qdq import QuantizedWeight, initializer_bytes, quantized_weight

CIN, COUT, K = 4, 8, 16
#: (weight shape, output-channel axis of the weight, input shape) per layer kind
LAYERS: dict[str, tuple[tuple[int, ...], int, list[int]]] = {
    "conv": ((COUT, CIN, 3, 3), 0, [2, CIN, 5, 5]),
    "convtranspose": ((CIN, COUT, 2, 2), 1, [2, CIN, 3, 3]),
    "gemm_transb": ((COUT, K), 0, [3, K]),
    "gemm": ((K, COUT), 1, [3, K]),
    "matmul": ((K, COUT), 1, [3, K]),
}


def qdq_layer_model(
    kind: str,
    wq: QuantizedWeight,
    *,
    bias: bool = True,
    opset: int = 17,
    seed: int = 0,
    extra: tuple[list[onnx.NodeProto], list[TensorProto]] = ([], []),
) -> onnx.ModelProto:
    """x -> layer(DQ weight ``wq``[, bias]) -> BN -> y, with BN statistics that show a wrong fold
    (negative gammas, var in [0.1, 4])."""
    rng = np.random.default_rng(seed)
    x_shape = LAYERS[kind][2]
    op = {"conv": "Conv", "convtranspose": "ConvTranspose", "matmul": "MatMul"}.get(kind, "Gemm")
    inputs = ["x", wq.name]
    inits = list(wq.inits)
    if bias and op != "MatMul":
        inputs.append("b")
        inits.append(tensor("b", rng.normal(0, 0.5, COUT).astype(np.float32)))
    attrs: dict[str, Any] = {}
    if op == "Conv":
        attrs["pads"] = [1] * 4
    elif op == "ConvTranspose":
        attrs["strides"] = [2, 2]
    elif kind == "gemm_transb":
        attrs["transB"] = 1
    layer = helper.make_node(op, inputs, ["l"], name="layer", **attrs)
    nodes = [*wq.nodes, *extra[0], layer, bn_node("l", "y", "bn")]
    inits += [*extra[1], *bn_initializers("bn", bn_stats(rng, COUT))]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, x_shape)],
        [vinfo("y", TensorProto.FLOAT, None)],
        inits,
        opset=opset,
        ir_version=10 if opset >= 21 else 8,
    )


def s_of(model: onnx.ModelProto) -> np.ndarray:
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    return inits["bn_scale"] / np.sqrt(inits["bn_var"] + 1e-5)


def dq_node(model: onnx.ModelProto) -> onnx.NodeProto:
    (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return dq


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    (t,) = [t for t in model.graph.initializer if t.name == name]
    return numpy_helper.to_array(t)


#: (weight type, quantization: "axis" (on the output channels), "tensor" or "block", zero point)
FORMS = [
    ("int8", "axis", True),
    ("int8", "axis", False),
    ("uint8", "axis", True),
    ("int8", "tensor", True),
    ("uint8", "tensor", True),
    ("int8", "tensor", False),
    ("int16", "axis", True),
    ("int32", "tensor", False),
    ("int4", "axis", True),
    ("uint4", "tensor", True),
    ("uint4", "block", True),
]


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize(("qtype", "form", "zp"), FORMS)
def test_weight_only_qdq_folds_exactly(kind: str, qtype: str, form: str, zp: bool) -> None:
    shape, channel_axis, _ = LAYERS[kind]
    rng = np.random.default_rng(7)
    other = 1 - channel_axis
    axis = {"axis": channel_axis, "tensor": None, "block": other}[form]
    block = 2 if form == "block" else 0
    wq = quantized_weight(rng, shape, qtype=qtype, axis=axis, block=block, zero_point=zp)
    opset = 21 if qtype in ("int4", "uint4", "int16") or block else 17
    model = qdq_layer_model(kind, wq, opset=opset)
    q_bytes = initializer_bytes(model, "w_q")
    result = assert_fold_matches(model, expect_folded=1)
    folded = result.model
    assert count_ops(folded, "BatchNormalization") == 0
    dq = dq_node(folded)
    assert dq.input[0] == "w_q" and initializer_bytes(folded, "w_q") == q_bytes
    layer = next(n for n in folded.graph.node if n.name == "layer")
    assert layer.input[1] == dq.output[0]
    assert layer.op_type == ("Gemm" if kind == "matmul" else model.graph.node[1].op_type)
    # the new scale is scale * s on the output-channel axis, in float64 rounded once
    s = s_of(model)
    along = [-1 if i == channel_axis else 1 for i in range(len(shape))]
    if form == "tensor":
        expect = wq.scale.astype(np.float64) * s
        assert helper.get_attribute_value(dq.attribute[0]) == channel_axis
    elif form == "axis":
        expect = wq.scale.astype(np.float64) * s
    else:
        expect = wq.scale.astype(np.float64) * s.reshape(along)
    new_scale = init(folded, dq.input[1])
    np.testing.assert_array_equal(new_scale, expect.astype(np.float32))
    assert (new_scale < 0).any()  # the negative gammas went into the scale, not the integers
    if zp:
        new_zp = init(folded, dq.input[2])
        want = (
            np.broadcast_to(wq.zero_point, new_scale.shape) if form == "tensor" else wq.zero_point
        )
        assert new_zp.dtype == wq.zero_point.dtype  # type: ignore[union-attr]
        np.testing.assert_array_equal(new_zp.astype(np.int64), np.asarray(want).astype(np.int64))
    decision = result.report.decisions[0]
    assert "through the scale of its DequantizeLinear 'w_dq'" in decision.message
    assert f"the {qtype} weight 'w_q' is unchanged" in decision.message


def test_float16_scale_and_matmul_without_bias() -> None:
    rng = np.random.default_rng(3)
    wq = quantized_weight(rng, (K, COUT), axis=1, scale_dtype=np.float16)
    model = qdq_layer_model("matmul", wq, bias=False, opset=19)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    for t in model.graph.initializer:
        if t.name.startswith("bn_"):
            t.CopyFrom(tensor(t.name, numpy_helper.to_array(t).astype(np.float16)))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    result = assert_fold_matches(model, expect_folded=1, rtol=2e-2, atol=2e-2)
    assert init(result.model, dq_node(result.model).input[1]).dtype == np.float16


def test_uniform_s_keeps_a_per_tensor_scale_even_before_opset_13() -> None:
    """Where every channel gets the same factor, any scale takes it as it is."""
    rng = np.random.default_rng(4)
    wq = quantized_weight(rng, LAYERS["conv"][0], axis=None)
    model = qdq_layer_model("conv", wq, opset=10)
    for t in model.graph.initializer:
        if t.name in ("bn_scale", "bn_var"):
            value = -1.5 if t.name == "bn_scale" else 2.0
            t.CopyFrom(tensor(t.name, np.full(COUT, value, np.float32)))
    result = assert_fold_matches(model, expect_folded=1)
    dq = dq_node(result.model)
    assert not dq.attribute and init(result.model, dq.input[1]).shape == ()


def test_shared_dequantize_gets_a_copy_per_layer() -> None:
    """Two layers read one DequantizeLinear and their BNs differ: each gets its own copy of the
    DequantizeLinear with its own scale, reading the one integer weight, which stays as it was."""
    rng = np.random.default_rng(5)
    wq = quantized_weight(rng, LAYERS["conv"][0], axis=0)
    nodes = [
        *wq.nodes,
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1] * 4),
        bn_node("c1", "y1", "bn1"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
        bn_node("c2", "y2", "bn2"),
    ]
    inits = [*wq.inits]
    inits += bn_initializers("bn1", bn_stats(rng, COUT)) + bn_initializers(
        "bn2", bn_stats(rng, COUT)
    )
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, CIN, 5, 5])],
        [vinfo("y1", TensorProto.FLOAT, None), vinfo("y2", TensorProto.FLOAT, None)],
        inits,
    )
    q_bytes = initializer_bytes(model, "w_q")
    result = assert_fold_matches(model, expect_folded=2)
    folded = result.model
    dqs = [n for n in folded.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and {dq.input[0] for dq in dqs} == {"w_q"}
    assert len({dq.input[1] for dq in dqs}) == 2
    assert initializer_bytes(folded, "w_q") == q_bytes
    assert [t.name for t in folded.graph.initializer].count("w_q") == 1
    assert "a copy of it for this layer" in result.report.decisions[0].message


def test_folds_through_a_file_and_keeps_the_weight_bytes(tmp_path: Path) -> None:
    """fold_file keeps large weights in the input file until written: the integer weight is
    copied byte for byte, the scale and the per-channel zero point (int8 and packed uint4) are
    written from the fold; the outputs agree in onnxruntime."""
    rng = np.random.default_rng(6)
    for qtype, opset in (("uint8", 17), ("uint4", 21)):
        wq = quantized_weight(rng, (COUT, 64, 3, 3), qtype=qtype, axis=None)
        model = qdq_layer_model("conv", wq, opset=opset)
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 64
        src, dst = tmp_path / f"{qtype}.onnx", tmp_path / f"{qtype}.folded.onnx"
        onnx.save(model, src)
        fold_file(src, dst, verify=None)
        folded = onnx.load(dst)
        assert count_ops(folded, "BatchNormalization") == 0
        assert initializer_bytes(folded, "w_q") == initializer_bytes(model, "w_q")
        zp = init(folded, dq_node(folded).input[2])
        assert zp.shape == (COUT,) and (zp.astype(np.int64) == int(wq.zero_point)).all()  # type: ignore[arg-type]
        feeds = random_feeds(model)
        np.testing.assert_allclose(
            run_ort(folded, feeds)[0], run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4
        )
        again = fold_model(folded)  # folding its own output changes nothing
        assert again.report.folded == 0


def refused(model: onnx.ModelProto, reason: str, *words: str) -> None:
    before = model.SerializeToString()
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.status == "skipped" and decision.reason == reason, decision
    for word in words:
        assert word in decision.message, decision.message
    assert result.model.SerializeToString() == before


def test_per_axis_on_another_axis_is_refused() -> None:
    """Gemm B [K, N] scaled per row (axis 0): the BN needs a factor per column."""
    wq = quantized_weight(np.random.default_rng(8), LAYERS["gemm"][0], axis=0)
    refused(qdq_layer_model("gemm", wq), "quantized_weight", "per axis 0", "axis 1")


def test_blocks_across_output_channels_are_refused() -> None:
    wq = quantized_weight(np.random.default_rng(9), LAYERS["conv"][0], axis=0, block=2)
    refused(qdq_layer_model("conv", wq, opset=21), "quantized_weight", "blocks of 2 output")


def test_grouped_convtranspose_is_refused() -> None:
    wq = quantized_weight(np.random.default_rng(10), (CIN, COUT // 2, 2, 2), axis=1)
    model = qdq_layer_model("convtranspose", wq)
    layer = next(n for n in model.graph.node if n.name == "layer")
    layer.attribute.append(helper.make_attribute("group", 2))
    refused(model, "quantized_weight", "span two axes")


def test_per_tensor_before_opset_13_is_refused() -> None:
    wq = quantized_weight(np.random.default_rng(11), LAYERS["conv"][0], axis=None)
    refused(qdq_layer_model("conv", wq, opset=12), "quantized_weight", "opset 12")


def test_per_tensor_zero_point_that_is_not_a_constant_is_refused() -> None:
    """A per-tensor zero point that a caller can override cannot be repeated per channel."""
    wq = quantized_weight(np.random.default_rng(12), LAYERS["conv"][0], qtype="uint8", axis=None)
    model = qdq_layer_model("conv", wq)
    model.graph.input.append(vinfo("w_zp", TensorProto.UINT8, []))
    refused(model, "non_constant_weight", "zero point 'w_zp'", "repeated per output channel")


def test_scale_that_would_overflow_or_underflow_is_refused() -> None:
    """float16 scales: times a huge s they overflow, times a tiny one they fall below the
    normal range (and would lose their precision)."""
    for gamma, var, words in ((1e4, 1e-6, "non-finite"), (1e-6, 4.0, "smallest normal")):
        rng = np.random.default_rng(13)
        wq = quantized_weight(rng, (K, COUT), axis=1, scale_dtype=np.float16)
        model = qdq_layer_model("gemm", wq, opset=19)
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
        for t in model.graph.initializer:
            if t.name.startswith("bn_") or t.name == "b":
                value = numpy_helper.to_array(t).astype(np.float16)
                if t.name == "bn_scale":
                    value[:] = gamma
                    value[0] = -gamma
                if t.name == "bn_var":
                    value[:] = var
                t.CopyFrom(tensor(t.name, value))
        refused(model, "non_finite", words)


def test_float8_weight_is_refused() -> None:
    rng = np.random.default_rng(14)
    wq = quantized_weight(rng, LAYERS["conv"][0], axis=0, zero_point=False)
    q = rng.normal(0, 2, LAYERS["conv"][0]).astype(np.float32)
    f8 = helper.make_tensor("w_q", TensorProto.FLOAT8E4M3FN, q.shape, q.reshape(-1).tolist())
    wq.inits[0] = f8
    refused(qdq_layer_model("conv", wq, opset=19), "unsupported_dtype", "float8e4m3fn weight")


def test_dequantized_weight_of_the_layer_after_is_refused() -> None:
    """BN -> Conv(DQ W): the BN would scale the layer's input channels, which a per-output-axis
    scale cannot carry."""
    rng = np.random.default_rng(15)
    wq = quantized_weight(rng, (COUT, CIN, 1, 1), axis=0)
    nodes = [*wq.nodes, bn_node("x", "n", "bn"), helper.make_node("Conv", ["n", "w"], ["y"])]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, CIN, 5, 5])],
        [vinfo("y", TensorProto.FLOAT, None)],
        [*wq.inits, *bn_initializers("bn", bn_stats(rng, CIN))],
    )
    refused(model, "quantized_weight", "made by DequantizeLinear 'w_dq'")


def activation_qdq(after: list[onnx.NodeProto], inits: list[TensorProto]) -> onnx.ModelProto:
    """Conv -> QuantizeLinear -> DequantizeLinear -> BN (quantize_static on an unfolded model)."""
    rng = np.random.default_rng(16)
    w = rng.normal(0, 0.3, (COUT, CIN, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("QuantizeLinear", ["c", "a_s", "a_zp"], ["cq"], name="q"),
        helper.make_node("DequantizeLinear", ["cq", "a_s", "a_zp"], ["cd"], name="dq"),
        bn_node("cd", "n", "bn"),
        *after,
    ]
    inits = [
        tensor("w", w),
        tensor("a_s", np.array(0.05, np.float32)),
        tensor("a_zp", np.array(128, np.uint8)),
        *bn_initializers("bn", bn_stats(rng, COUT)),
        *inits,
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [2, CIN, 5, 5])],
        [vinfo(after[-1].output[0] if after else "n", TensorProto.FLOAT, None)],
        inits,
    )


def test_quantized_activation_is_refused_with_its_own_reason() -> None:
    words = ("DequantizeLinear 'dq' of QuantizeLinear 'q' after Conv 'conv'", "before quantizing")
    refused(activation_qdq([], []), "quantized_activation", *words)
    # nor into an unpadded Conv after it, which could take an ordinary BN after a Relu
    w2 = np.random.default_rng(17).normal(0, 0.3, (3, COUT, 1, 1)).astype(np.float32)
    after = [helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2")]
    refused(activation_qdq(after, [tensor("w2", w2)]), "quantized_activation", *words)


def test_quantize_static_output_is_refused() -> None:
    """What onnxruntime.quantization.quantize_static makes of an unfolded Conv -> BN -> Relu:
    every BN is left, each with the quantized-activation reason."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(18)
    w = rng.normal(0, 0.3, (COUT, CIN, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
        bn_node("c", "n", "bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    inits = [tensor("w", w), *bn_initializers("bn", bn_stats(rng, COUT))]
    model = make_model(
        nodes, [vinfo("x", TensorProto.FLOAT, [1, CIN, 5, 5])], [vinfo("y", 1, None)], inits
    )

    class Data(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.feeds = iter([{"x": rng.standard_normal((1, CIN, 5, 5)).astype(np.float32)}] * 4)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quantization.quantize_static(
            str(src), str(dst), Data(), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
        )  # fmt: skip
        quantized = onnx.load(dst)
    assert count_ops(quantized, "BatchNormalization") == 1
    refused(quantized, "quantized_activation", "before quantizing")


def test_concat_of_quantized_layers_and_a_scale_mul() -> None:
    """The DequantizeLinear plans ride along where a layer's plan goes: into each layer a Concat
    joins, and into the layer before a per-channel scale Mul."""
    rng = np.random.default_rng(19)
    w1 = quantized_weight(rng, (4, 3, 1, 1), axis=0, prefix="w1")
    w2 = quantized_weight(rng, (5, 3, 1, 1), axis=None, prefix="w2")
    nodes = [
        *w1.nodes,
        *w2.nodes,
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
        bn_node("cat", "y", "bn"),
    ]
    x = vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])
    inits = [*w1.inits, *w2.inits, *bn_initializers("bn", bn_stats(rng, 9))]
    model = make_model(nodes, [x], [vinfo("y", TensorProto.FLOAT, None)], inits)
    result = assert_fold_matches(model, expect_folded=1)
    for name in ("w1_q", "w2_q"):
        assert initializer_bytes(result.model, name) == initializer_bytes(model, name)
    k = rng.uniform(-2, 2, (4, 1, 1)).astype(np.float32)
    nodes = [
        *w1.nodes,
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "k"], ["y"], name="mul"),
    ]
    model = make_model(
        nodes, [x], [vinfo("y", TensorProto.FLOAT, None)], [*w1.inits, tensor("k", k)]
    )
    result = assert_fold_matches(model, expect_folded=1, bn_folded=0)
    assert [n.op_type for n in result.model.graph.node] == ["DequantizeLinear", "Conv"]


def test_dequantize_in_the_graph_around_a_subgraph() -> None:
    """Both branches of an If read the main graph's DequantizeLinear: each gets a copy inside
    it, and the original, read by nobody any more, goes."""
    rng = np.random.default_rng(20)
    wq = quantized_weight(rng, (4, 3, 1, 1), axis=0)

    def branch(tag: str, seed: int) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Conv", ["x", "w"], [f"c{tag}"], name=f"conv{tag}"),
            bn_node(f"c{tag}", f"y{tag}", f"bn{tag}"),
        ]
        stats = bn_initializers(f"bn{tag}", bn_stats(np.random.default_rng(seed), 4))
        return helper.make_graph(nodes, tag, [], [vinfo(f"y{tag}", TensorProto.FLOAT, None)], stats)

    cond = helper.make_node(
        "If", ["cond"], ["y"], then_branch=branch("t", 1), else_branch=branch("e", 2), name="if"
    )
    inputs = [vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4]), vinfo("cond", TensorProto.BOOL, [])]
    model = make_model([*wq.nodes, cond], inputs, [vinfo("y", TensorProto.FLOAT, None)], wq.inits)
    result = fold_model(model)
    assert result.report.folded == 2
    assert count_ops(result.model, "DequantizeLinear") == 2  # one per branch
    assert [n.op_type for n in result.model.graph.node] == ["If"]
    assert initializer_bytes(result.model, "w_q") == initializer_bytes(model, "w_q")
    for flag in (True, False):
        feeds = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32), "cond": np.array(flag)}
        np.testing.assert_allclose(
            run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=1e-4, atol=1e-5
        )


def test_malformed_dequantize_is_refused_not_a_crash() -> None:
    """A model file is untrusted: a zero point whose shape is not the scale's, or an axis that
    is not an integer, is a refusal with a reason, not a traceback."""
    rng = np.random.default_rng(21)
    wq = quantized_weight(rng, LAYERS["conv"][0], qtype="uint8", axis=None)
    model = qdq_layer_model("conv", wq)
    for t in model.graph.initializer:
        if t.name == "w_zp":
            t.CopyFrom(tensor("w_zp", np.arange(3, dtype=np.uint8)))
    refused(model, "shape_mismatch", "zero point of shape [3]")
    model = qdq_layer_model("conv", quantized_weight(rng, LAYERS["conv"][0], axis=0))
    dq = model.graph.node[0]
    del dq.attribute[:]
    dq.attribute.append(helper.make_attribute("axis", "zero"))
    refused(model, "shape_mismatch", "'axis' attribute that is not an integer")
