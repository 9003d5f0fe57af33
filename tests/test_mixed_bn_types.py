"""BatchNormalization-15 lets X (and Y) be of one float type T and scale/B (T1), mean/var (T2) of
another. The fold is right for every such mix; verification must compute the original's BN with
Y of X's type (not the parameters') in the parameters' full precision, so a correct fold is
verified (exit 0) and a wrong one still fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from bnfold import fold_model
from bnfold.cli.app import app
from tests.builders import bn_node, bn_stats, count_ops, make_model, tensor, vinfo

C = 6
runner = CliRunner()
TYPES: dict[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
}


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def mixed_conv_bn(x_type: str, param_type: str) -> onnx.ModelProto:
    """Conv (X's type) -> BN-15 with statistics of ``param_type``: var in [0.1, 4], negative
    gammas, outputs of order 1."""
    rng = np.random.default_rng(3)
    dtype, ptype = TYPES[x_type], TYPES[param_type]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.normal(0, 1, (C, 3, 3, 3)) / np.sqrt(27)).astype(dtype)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
    ]
    stats = {k: v.astype(ptype) for k, v in bn_stats(rng, C).items()}
    inits = [tensor("w", w), *(tensor(f"bn_{k}", v) for k, v in stats.items())]
    return make_model(
        nodes,
        [vinfo("x", elem, [1, 3, 8, 8])],
        [vinfo("y", elem, [1, C, 8, 8])],
        inits,
        opset=15,
    )


MIXES = [
    ("float32", "bfloat16"),
    ("float32", "float16"),
    ("float16", "float32"),
    ("float16", "bfloat16"),
    ("bfloat16", "float32"),
    ("float64", "float32"),
    ("float64", "bfloat16"),
]


@pytest.mark.parametrize(("x_type", "param_type"), MIXES)
def test_mixed_types_fold_and_verify(tmp_path: Path, x_type: str, param_type: str) -> None:
    src, dst = tmp_path / "m.onnx", tmp_path / "m.folded.onnx"
    onnx.save(mixed_conv_bn(x_type, param_type), src)
    code, out, err = invoke(str(src), "-o", str(dst), "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["models"]
    assert entry["report"]["bn_folded"] == 1
    verification = entry["verification"]
    assert verification["status"] == "passed", verification
    (output,) = verification["outputs"]
    assert output["dtype"] == x_type  # Y has X's type, in both models
    folded = onnx.load(dst)
    assert count_ops(folded, "BatchNormalization") == 0
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    types = {t.name: t.data_type for t in folded.graph.initializer}
    x_elem = helper.np_dtype_to_tensor_dtype(np.dtype(TYPES[x_type]))
    assert [types[n] for n in conv.input[1:]] == [x_elem, x_elem]  # the layer's own type


def _tampered(folded: onnx.ModelProto, change: Any) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(folded)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    w = next(t for t in bad.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(w)), w.name))
    return bad


def _in_param_type(original: onnx.ModelProto, param_type: str) -> Any:
    """The fold done in the parameters' type: the scale rounded to bfloat16 before it scales the
    weight (an error of up to 2^-9 relative, far above float32's tolerance)."""
    arrays = {
        t.name: numpy_helper.to_array(t).astype(np.float64) for t in original.graph.initializer
    }
    s = arrays["bn_scale"] / np.sqrt(arrays["bn_var"] + np.float64(np.float32(1e-5)))
    rounded = s.astype(TYPES[param_type]).astype(np.float64)

    def change(w: np.ndarray) -> np.ndarray:
        return (w.astype(np.float64) * (rounded / s)[:, None, None, None]).astype(w.dtype)

    return change


@pytest.mark.parametrize(
    ("x_type", "param_type", "wrong"),
    [
        ("float32", "bfloat16", "weights-1.5x"),
        ("float32", "bfloat16", "fold-in-param-type"),
        ("float16", "float32", "weights-1.5x"),
        ("float64", "bfloat16", "fold-in-param-type"),
    ],
)
def test_wrong_fold_of_mixed_types_still_fails(
    tmp_path: Path, x_type: str, param_type: str, wrong: str
) -> None:
    """The right fold, changed: verification (which passes it, see above) must refuse it."""
    original = mixed_conv_bn(x_type, param_type)
    src = tmp_path / "m.onnx"
    onnx.save(original, src)
    change = (
        (lambda w: (w.astype(np.float64) * 1.5).astype(w.dtype))
        if wrong == "weights-1.5x"
        else _in_param_type(original, param_type)
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(_tampered(fold_model(original).model, change), bad)
    code, out, err = invoke("verify", str(src), str(bad), "--json")
    assert code == 1, err
    (output,) = json.loads(out)["verification"]["outputs"]
    assert not output["passed"] and output["error_ratio"] > 1
