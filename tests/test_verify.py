"""Verification must pass every correct fold and fail wrong ones, whatever runs the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import fold_model
from bnfold.errors import UsageError
from bnfold.verification.compare import compare_arrays
from bnfold.verification.report import VerifyReport
from bnfold.verification.run import verify
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo

C = 6


def conv_bn(
    dtype: type = np.float32, *, opset: int = 17, shape: list[int | str] | None = None
) -> onnx.ModelProto:
    """Conv(bias) -> BN with outputs of order 1, so a 1e-3 error is far above float32 noise."""
    rng = np.random.default_rng(7)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.normal(0, 1, (C, 3, 3, 3)) / np.sqrt(27)).astype(dtype)
    b: np.ndarray = rng.normal(0, 0.1, C).astype(dtype)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
    ]
    params = bn_params(rng, C, dtype)
    params["var"] = rng.uniform(0.5, 2.0, C).astype(dtype)  # outputs of order 1
    inits = [tensor("w", w), tensor("b", b), *bn_initializers("bn", params)]
    x_shape = shape or ["N", 3, 8, 8]
    return make_model(
        nodes, [vinfo("x", elem, x_shape)], [vinfo("y", elem, None)], inits, opset=opset
    )


def tamper(model: onnx.ModelProto, rank: int, change: object) -> onnx.ModelProto:
    """A copy of ``model`` with ``change(array)`` applied to its folded weight (4) or bias (1)."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3, "the fold gives the Conv a bias"
    name = conv.input[1 if rank == 4 else 2]
    t = next(t for t in bad.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(t).copy()
    change(arr)  # type: ignore[operator]
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return bad


@pytest.fixture(scope="module")
def pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    original = conv_bn()
    folded = fold_model(original).model
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    return original, folded


def test_correct_fold_passes(pair: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    report = verify(*pair)
    assert report.status == "passed" and report.passed
    assert report.backend == "onnxruntime"
    (out,) = report.outputs
    assert out.name == "y" and out.dtype == "float32" and out.shape == (1, C, 8, 8)
    assert out.rtol == 1e-4 and out.atol == 1e-5
    assert out.scale < 10, "the test needs outputs of order 1"
    assert out.max_abs < 1e-5 and out.error_ratio < 1 and out.mismatched == 0
    assert report.input_shapes == {"x": [1, 3, 8, 8]}
    assert any("x" in n and "1x3x8x8" in n for n in report.notes)  # the default N -> 1 is said


def _scale_channel(a: np.ndarray) -> None:
    a[2] *= 1.5


def _flip_channel(a: np.ndarray) -> None:
    a[4] = -a[4]


def _bias_off(a: np.ndarray) -> None:
    a[1] += np.float32(1e-3)


@pytest.mark.parametrize(
    ("rank", "change"),
    [(4, _scale_channel), (4, _flip_channel), (1, _bias_off)],
    ids=["weights-1.5x", "sign-flipped", "bias-off-1e-3"],
)
def test_wrong_fold_fails(
    pair: tuple[onnx.ModelProto, onnx.ModelProto], rank: int, change: object
) -> None:
    original, folded = pair
    report = verify(original, tamper(folded, rank, change))
    assert report.status == "failed" and not report.passed
    (out,) = report.outputs
    assert not out.passed and out.mismatched > 0 and out.error_ratio > 1
    assert "'y'" in (report.reason or "")


def test_reported_numbers_are_exact(pair: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    original, folded = pair
    (out,) = verify(original, tamper(folded, 1, _bias_off)).outputs
    assert out.max_abs == pytest.approx(1e-3, rel=1e-2)
    assert out.mismatched == 64  # exactly the 8x8 elements of channel 1
    assert out.mean_abs == pytest.approx(1e-3 / C, rel=1e-2)
    # the smallest atol that passes, applied to the same comparison, passes
    again = verify(original, tamper(folded, 1, _bias_off), atol=out.min_atol * 1.01)
    assert again.passed


def test_per_output_tolerance_overrides(pair: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    original, folded = pair
    bad = tamper(folded, 1, _bias_off)
    assert verify(original, bad, output_tolerances={"y": (None, 1e-2)}).passed
    assert not verify(original, bad, output_tolerances={"other": (None, 1e-2)}).passed


def test_samples_and_seed(pair: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    report = verify(*pair, samples=3, seed=5)
    assert report.samples == 3 and report.seed == 5
    assert report.outputs[0].size == 3 * C * 8 * 8


def test_input_shapes_and_npz(
    pair: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    report = verify(*pair, input_shapes={"x": [2, 3, 8, 8]})
    assert report.input_shapes == {"x": [2, 3, 8, 8]} and report.outputs[0].shape == (2, C, 8, 8)
    data = tmp_path / "x.npz"
    np.savez(data, x=np.full((3, 3, 8, 8), 0.5, np.float32))
    report = verify(*pair, inputs=data)
    assert report.passed and report.outputs[0].shape == (3, C, 8, 8)
    np.savez(data, x=np.zeros((3, 3, 8, 8), np.float64))
    with pytest.raises(UsageError, match="float64"):
        verify(*pair, inputs=data)


@pytest.mark.parametrize("shapes", [{"nope": [1, 3, 8, 8]}, {"x": [1, 3, 8]}, {"x": [1, 4, 8, 8]}])
def test_bad_input_shapes(
    pair: tuple[onnx.ModelProto, onnx.ModelProto], shapes: dict[str, list[int]]
) -> None:
    with pytest.raises(UsageError):
        verify(*pair, input_shapes=shapes)


def test_dynamic_spatial_dims_default_and_symbols() -> None:
    original = conv_bn(shape=["N", 3, "H", "H"])
    report = verify(original, fold_model(original).model)
    assert report.passed and report.input_shapes == {"x": [1, 3, 16, 16]}


def test_models_with_different_outputs_are_a_usage_error(
    pair: tuple[onnx.ModelProto, onnx.ModelProto],
) -> None:
    other = onnx.ModelProto()
    other.CopyFrom(pair[1])
    other.graph.output[0].name = "z"
    other.graph.node[-1].output[0] = "z"
    with pytest.raises(UsageError, match="different outputs"):
        verify(pair[0], other)


def multi_io_model() -> onnx.ModelProto:
    """Float, int64 and bool inputs; float and int64 outputs."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "bn_out", "bn"),
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["bn_out", "kf"], ["s"], name="add"),
        helper.make_node("Where", ["mask", "s", "zero"], ["y"], name="where"),
        helper.make_node("ArgMax", ["y"], ["idx"], axis=1, name="argmax"),
    ]
    inits = [
        tensor("w", (rng.normal(0, 1, (4, 3, 1, 1)) / 2).astype(np.float32)),
        tensor("zero", np.zeros((), np.float32)),
        *bn_initializers("bn", bn_params(rng, 4)),
    ]
    return make_model(
        nodes,
        [
            vinfo("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            vinfo("k", TensorProto.INT64, ["N", 4, 4, 4]),
            vinfo("mask", TensorProto.BOOL, ["N", 4, 4, 4]),
        ],
        [vinfo("y", TensorProto.FLOAT, None), vinfo("idx", TensorProto.INT64, None)],
        inits,
    )


def test_multi_output_int_and_bool_inputs() -> None:
    original = multi_io_model()
    report = verify(original, fold_model(original).model, samples=2)
    assert report.passed
    by_name = {o.name: o for o in report.outputs}
    assert set(by_name) == {"y", "idx"}
    assert by_name["idx"].dtype == "int64" and (by_name["idx"].rtol, by_name["idx"].atol) == (0, 0)
    assert report.input_shapes == {"x": [1, 3, 4, 4], "k": [1, 4, 4, 4], "mask": [1, 4, 4, 4]}
    wrong = verify(original, tamper(fold_model(original).model, 1, _bias_off))
    assert wrong.status == "failed"
    assert not {o.name: o for o in wrong.outputs}["y"].passed


def test_float64_conv_falls_back_to_reference() -> None:
    """onnxruntime has no float64 Conv kernel: onnx.reference runs both models instead."""
    original = conv_bn(np.float64)
    folded = fold_model(original).model
    report = verify(original, folded)
    assert report.passed and report.backend == "onnx.reference"
    assert any("onnxruntime could not run" in n for n in report.notes)
    assert report.outputs[0].dtype == "float64" and report.outputs[0].max_abs < 1e-12
    wrong = verify(original, tamper(folded, 1, _bias_off))
    assert wrong.status == "failed" and wrong.backend == "onnx.reference"


def test_reference_batchnorm_uses_running_statistics() -> None:
    """onnx 1.23's reference BN for opsets 9-13 uses batch statistics; bnfold's must not."""
    original = conv_bn(np.float64, opset=11)
    report = verify(original, fold_model(original).model, input_shapes={"x": [2, 3, 8, 8]})
    assert report.backend == "onnx.reference"
    assert report.passed, report.outputs[0]


def trained_conv_bn(dtype: Any, channels: int = 16) -> onnx.ModelProto:
    """Conv -> BN with trained statistics (variances 1e-3..10): outputs in the hundreds."""
    rng = np.random.default_rng(7)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.normal(0, 1, (channels, 8, 3, 3)) / np.sqrt(72)).astype(dtype)
    b: np.ndarray = rng.normal(0, 0.1, channels).astype(dtype)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
    ]
    inits = [
        tensor("w", w),
        tensor("b", b),
        *bn_initializers("bn", bn_params(rng, channels, dtype)),
    ]
    return make_model(nodes, [vinfo("x", elem, [1, 8, 16, 16])], [vinfo("y", elem, None)], inits)


def test_bfloat16_conv_bn_verifies_through_reference() -> None:
    """onnxruntime has no bfloat16 Conv on CPU: onnx.reference runs both. bfloat16 outputs get
    the float criterion (atol follows the output's range), not integer equality of scale 1."""
    original = trained_conv_bn(ml_dtypes.bfloat16)
    folded = fold_model(original).model
    report = verify(original, folded, samples=2)
    (out,) = report.outputs
    assert report.backend == "onnx.reference"
    assert report.passed, out
    assert out.dtype == "bfloat16" and out.scale > 50 and out.error_ratio < 0.5


def _bias_up(a: np.ndarray) -> None:
    a[1] += 0.5  # visible in bfloat16, where 1e-3 rounds away


@pytest.mark.parametrize(
    ("rank", "change"),
    [(4, _scale_channel), (4, _flip_channel), (1, _bias_up)],
    ids=["weights-1.5x", "sign-flipped", "bias-off-0.5"],
)
def test_wrong_bfloat16_fold_fails(rank: int, change: object) -> None:
    original = conv_bn(ml_dtypes.bfloat16)
    report = verify(original, tamper(fold_model(original).model, rank, change))
    assert report.backend == "onnx.reference"
    assert report.status == "failed"
    (out,) = report.outputs
    assert out.mismatched > 0 and out.error_ratio > 1


def test_compare_bfloat16_is_a_float() -> None:
    bf16 = ml_dtypes.bfloat16
    ref = np.array([300.0, 0.0, -2.0], bf16)
    near = np.array([302.0, 0.5, -2.0], bf16)  # one bfloat16 ULP at 300; 0.5 <= 0.01 * 300
    c = compare_arrays("o", ref, near, 5e-2, 1e-2)
    assert c.scale == 300.0 and c.passed and c.dtype == "bfloat16"
    far = np.array([300.0, 4.0, -2.0], bf16)
    assert not compare_arrays("o", ref, far, 5e-2, 1e-2).passed


def crashing_model() -> onnx.ModelProto:
    """BN-15 in training mode with empty optional outputs: onnxruntime segfaults loading it."""
    rng = np.random.default_rng(0)
    node = helper.make_node(
        "BatchNormalization",
        ["x", "bn_scale", "bn_B", "bn_mean", "bn_var"],
        ["y", "", ""],
        name="bn",
        training_mode=1,
    )
    return make_model(
        [node],
        [vinfo("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [2, 3, 4, 4])],
        bn_initializers("bn", bn_params(rng, 3)),
        opset=15,
    )


def test_onnxruntime_crash_is_a_report_not_a_crash() -> None:
    model = crashing_model()
    report = verify(model, model)
    assert isinstance(report, VerifyReport)
    assert any("signal" in n for n in report.notes), report.notes
    # onnx.reference runs it instead (training-mode BN, batch statistics, on both sides)
    assert report.backend == "onnx.reference" and report.passed


def test_nothing_can_run_it_is_unverified() -> None:
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="m")
    model = make_model(
        [node],
        [vinfo("x", TensorProto.FLOAT, [1])],
        [vinfo("y", TensorProto.FLOAT, [1])],
        extra_opsets=[("com.example", 1)],
    )
    report = verify(model, model)
    assert report.status == "unverified" and report.backend is None and not report.outputs
    assert "onnxruntime" in (report.reason or "") and "onnx.reference" in (report.reason or "")
    assert report.to_dict()["status"] == "unverified"


# -- the comparison itself -------------------------------------------------------------------


def test_compare_nan_inf_dtype_shape() -> None:
    a = np.array([1.0, np.nan, np.inf, 0.0], np.float32)
    assert compare_arrays("o", a, a.copy(), 1e-4, 1e-5).passed
    b = a.copy()
    b[1] = 0.0
    c = compare_arrays("o", a, b, 1e-4, 1e-5)
    assert not c.passed and c.mismatched == 1
    assert not compare_arrays("o", a, a.astype(np.float64), 1, 1).passed
    assert not compare_arrays("o", a, a[:3], 1, 1).passed


def test_compare_scale_is_the_output_range() -> None:
    ref = np.array([1000.0, 0.0], np.float32)
    near = ref + np.array([0.0, 5e-3], np.float32)  # allowed at 0: 1e-5 * 1000 = 1e-2
    c = compare_arrays("o", ref, near, 1e-4, 1e-5)
    assert c.scale == 1000.0 and c.passed and c.min_atol == pytest.approx(5e-6, rel=1e-3)
    far = ref + np.array([0.0, 2e-2], np.float32)
    assert not compare_arrays("o", ref, far, 1e-4, 1e-5).passed


def test_compare_integers_exact() -> None:
    a = np.array([1, 2, 3], np.int64)
    assert compare_arrays("i", a, a.copy(), 0, 0).passed
    b = a.copy()
    b[0] = 2
    c = compare_arrays("i", a, b, 0, 0)
    assert not c.passed and c.mismatched == 1 and c.max_abs == 1.0


def test_public_verify_is_the_function_and_import_stays_light() -> None:
    """``bnfold.verify`` is the documented function; importing bnfold never loads onnxruntime."""
    import subprocess
    import sys

    code = (
        "import sys, bnfold, bnfold.verification.run\n"
        "assert callable(bnfold.verify) and bnfold.verify is bnfold.verification.run.verify\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_verification_child_does_not_import_onnx() -> None:
    """The child that runs onnxruntime costs its sessions, not a second copy of bnfold's imports:
    neither onnx nor the fold engine is loaded on the onnxruntime path."""
    import subprocess
    import sys

    code = (
        "import sys, bnfold.verification.worker\n"
        "loaded = sorted(m for m in ('onnx', 'bnfold.fold', 'bnfold.api') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _shapeless_conv_bn() -> onnx.ModelProto:
    """Conv -> BN whose graph input declares no shape at all (onnx's checker wants one;
    onnxruntime runs it, and shows the input as a scalar)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), "w")]
    params = {
        "scale": rng.uniform(-2, 2, 4),
        "B": rng.normal(size=4),
        "mean": rng.normal(size=4),
        "var": rng.uniform(0.1, 4, 4),
    }
    inits += [numpy_helper.from_array(v.astype(np.float32), f"bn_{k}") for k, v in params.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node(
            "BatchNormalization", ["c", "bn_scale", "bn_B", "bn_mean", "bn_var"], ["y"], name="bn"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_an_input_without_a_shape_takes_the_shape_given(tmp_path: Path) -> None:
    """Such an input's rank is unknown: --input-shape gives it, verification runs at it (it was
    refused as "does not fit input 'x', declared []", so only --no-verify could write)."""
    src, dst = tmp_path / "m.onnx", tmp_path / "m.folded.onnx"
    onnx.save(_shapeless_conv_bn(), src)
    onnx.save(fold_model(onnx.load(src)).model, dst)
    report = verify(src, dst, input_shapes={"x": (2, 3, 5, 5)})
    assert report.status == "passed" and report.input_shapes == {"x": [2, 3, 5, 5]}
    with pytest.raises(UsageError, match="has no declared shape"):
        verify(src, dst)  # nothing says which rank to make: the user is asked
