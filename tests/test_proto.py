"""bnfold.model.proto: onnx's messages without the onnx package, and helpers that give exactly what
onnx's own helpers give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bnfold.model import proto

PLAIN = [
    "float32",
    "float64",
    "float16",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "bool",
]


def test_messages_are_onnxs_own_classes() -> None:
    assert proto.ModelProto is onnx.ModelProto
    assert proto.TensorProto is onnx.TensorProto
    assert isinstance(proto.NodeProto(), onnx.NodeProto)


@pytest.mark.parametrize("dtype", PLAIN)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)])
def test_arrays_round_trip_as_onnx_does(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(shape) * 50).astype(dtype)
    ours, theirs = proto.from_array(values, "t"), numpy_helper.from_array(values, "t")
    assert ours.SerializeToString() == theirs.SerializeToString()
    np.testing.assert_array_equal(proto.to_array(theirs), numpy_helper.to_array(theirs))
    typed = helper.make_tensor("t", ours.data_type, shape, values.reshape(-1).tolist())
    got, want = proto.to_array(typed), numpy_helper.to_array(typed)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert proto.np_dtype_to_tensor_dtype(values.dtype) == helper.np_dtype_to_tensor_dtype(
        values.dtype
    )
    assert proto.tensor_dtype_to_np_dtype(ours.data_type) == helper.tensor_dtype_to_np_dtype(
        ours.data_type
    )


def test_other_types_go_to_onnx() -> None:
    import ml_dtypes

    values = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)
    tensor = proto.from_array(values, "b")
    assert tensor.data_type == onnx.TensorProto.BFLOAT16
    np.testing.assert_array_equal(proto.to_array(tensor), values)


@pytest.mark.parametrize("value", [3, True, 2.5, "text", b"raw", [1, 2, 3], (1.5, 2), [0.5, 1.0]])
def test_attributes_and_nodes_as_onnx_makes_them(value: object) -> None:
    ours, theirs = proto.make_attribute("a", value), helper.make_attribute("a", value)
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert proto.get_attribute_value(theirs) == helper.get_attribute_value(theirs)
    t = numpy_helper.from_array(np.ones(3, np.float32), "w")
    n1 = proto.make_node("Constant", [], ["w"], name="w", value=t, b=2, a=[1, 2])
    n2 = helper.make_node("Constant", [], ["w"], name="w", value=t, b=2, a=[1, 2])
    assert n1.SerializeToString() == n2.SerializeToString()


def test_folding_a_conv_model_does_not_import_the_onnx_package(tmp_path: Path) -> None:
    """``import onnx`` costs ~1 s (ml_dtypes): folding Conv -> BN must not need it."""
    from tests.test_hostile import conv_bn

    onnx.save(conv_bn(), tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "from bnfold.api import fold_file\n"
        f"r = fold_file({str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'o.onnx')!r}, verify=None)\n"
        "assert r.report.bn_folded == 1, r.report\n"
        "loaded = sorted(m for m in ('onnx', 'ml_dtypes', 'onnxruntime') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    assert numpy_helper.to_array(onnx.load(tmp_path / "o.onnx").graph.initializer[0]).shape == (
        32,
        8,
        3,
        3,
    )


def test_verifying_two_files_does_not_import_the_onnx_package(tmp_path: Path) -> None:
    """Verification's cost is two onnxruntime sessions and runs: the parent must not pay onnx's
    import (~1 s) to check two paths."""
    from tests.test_hostile import conv_bn

    onnx.save(conv_bn(), tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "from bnfold.verification.run import verify\n"
        f"r = verify({str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'm.onnx')!r})\n"
        "assert r.status == 'passed', r\n"
        "assert 'onnx' not in sys.modules and 'ml_dtypes' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr


def test_shape_inference_does_not_import_the_onnx_package(tmp_path: Path) -> None:
    """A fold that needs shapes (MatMul -> Reshape -> BN) runs onnx's shape inference through its
    C++ extension alone: milliseconds, not the second ``import onnx`` costs. A later
    ``import onnx`` then uses that very extension (as it does the messages) and works."""
    from tests.rules.test_reshape_bn import chain

    onnx.save(chain(["N", 16], [("Reshape", [0, 8, 4, 4])], 8, k=16, cols=128), tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "from bnfold.api import fold_file\n"
        f"r = fold_file({str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'o.onnx')!r}, verify=None)\n"
        "assert r.report.bn_folded == 1, r.report\n"
        "assert 'onnx.onnx_cpp2py_export' in sys.modules  # shape inference ran\n"
        "loaded = sorted(m for m in ('onnx', 'ml_dtypes', 'onnxruntime') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "extension = sys.modules['onnx.onnx_cpp2py_export']\n"
        "import onnx\n"
        "assert sys.modules['onnx.onnx_cpp2py_export'] is extension\n"
        f"m = onnx.shape_inference.infer_shapes(onnx.load({str(tmp_path / 'o.onnx')!r}))\n"
        "onnx.checker.check_model(m, full_check=True)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr


def test_infer_shapes_and_tensor_value_info_match_onnx() -> None:
    from onnx import TensorProto
    from onnx.shape_inference import infer_shapes

    from tests.rules.test_reshape_bn import chain

    model = chain([2, 5, 16], [("Reshape", [0, 0, 8, 16]), ("Transpose", [0, 2, 1, 3])], 8,
                  k=16, cols=128)  # fmt: skip
    ours = proto.infer_shapes(model).SerializeToString()
    assert ours == infer_shapes(model, strict_mode=False).SerializeToString()
    for dims in ([], [3], [2, 0, 5]):
        mine = proto.tensor_value_info("t", TensorProto.FLOAT16, dims)
        theirs = helper.make_tensor_value_info("t", TensorProto.FLOAT16, dims)
        assert mine.SerializeToString() == theirs.SerializeToString()
