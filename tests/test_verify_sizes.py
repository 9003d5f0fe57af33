"""Verification of models whose unknown dims cannot be the default 16: a detector's feature
pyramid needs sides divisible by 2^levels. When the original does not run at 16, larger sizes
are tried (each a run of the original only, stopping at the first that runs) and the report says
which shapes were used; a model that runs at none stays unverified with the same message."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold.cli.app import app
from bnfold.runtime.inputs import InputSpec
from bnfold.runtime.serve import BackendError
from bnfold.verification import samples
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo
from tests.ortutil import run_ort

C = 4
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def pyramid(levels: int = 5) -> onnx.ModelProto:
    """x [N, 3, H, W] -> Conv -> BN -> MaxPool(2, 2) x ``levels``, then back up: Resize x2 and
    Add the feature map of the same level. At sides not divisible by 2^levels a pooled map loses
    a row that the upsampled one has: the Add cannot broadcast ("2 by 4" at 16 for 5 levels)."""
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f0"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("f0", "p0", "bn"),
    ]
    for i in range(1, levels + 1):
        nodes.append(
            helper.make_node(
                "MaxPool", [f"p{i - 1}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
            )
        )
    top = f"p{levels}"
    for i in range(levels - 1, -1, -1):
        nodes.append(helper.make_node("Resize", [top, "", "scales"], [f"u{i}"], mode="nearest"))
        nodes.append(helper.make_node("Add", [f"u{i}", f"p{i}"], [f"t{i}"]))
        top = f"t{i}"
    nodes.append(helper.make_node("Identity", [top], ["y"]))
    inits = [
        tensor("w", rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32)),
        *bn_initializers("bn", bn_stats(rng, C)),
        tensor("scales", np.array([1, 1, 2, 2], np.float32)),
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [vinfo("y", TensorProto.FLOAT, ["N", C, "H", "W"])],
        inits,
    )


@pytest.mark.parametrize(("levels", "side"), [(5, 32), (6, 64)])
def test_detector_verifies_at_the_first_size_that_runs(
    tmp_path: Path, levels: int, side: int
) -> None:
    src, dst = tmp_path / "det.onnx", tmp_path / "det.folded.onnx"
    onnx.save(pyramid(levels), src)
    code, out, err = invoke(str(src), "-o", str(dst), "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["models"]
    assert entry["report"]["bn_folded"] == 1 and entry["status"] == "folded"
    v = entry["verification"]
    assert v["status"] == "passed" and v["backend"] == "onnxruntime", v
    assert v["input_shapes"] == {"x": [1, 3, side, side]}
    (note,) = v["notes"]
    assert f"run as 1x3x{side}x{side}" in note
    assert "does not run with unknown dims at 16" in note and "broadcast" in note
    (output,) = v["outputs"]
    assert output["shape"] == [1, C, side, side] and output["max_abs"] > 0
    # the folded model computes the original's outputs at another size too
    folded = onnx.load(dst)
    assert count_ops(folded, "BatchNormalization") == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 2 * side, 2 * side)).astype(np.float32)
    (want,), (got,) = run_ort(pyramid(levels), {"x": x}), run_ort(folded, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # and people are told at which shapes it was verified
    code, out, err = invoke(str(src), "-o", str(tmp_path / "again.onnx"))
    assert code == 0 and f"inputs x 1x3x{side}x{side}" in out, err


def test_verify_command_says_the_shapes(tmp_path: Path) -> None:
    src, dst = tmp_path / "det.onnx", tmp_path / "det.folded.onnx"
    onnx.save(pyramid(), src)
    assert invoke(str(src), "-o", str(dst), "-q")[0] == 0
    code, out, err = invoke("verify", str(src), str(dst))
    assert code == 0, err
    assert "inputs x 1x3x32x32" in out and "note: input 'x' [N, 3, H, W] run as 1x3x32x32" in out


def never_runs() -> onnx.ModelProto:
    """Conv -> BN -> Add of a constant that fits no size of x."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "b", "bn"),
        helper.make_node("Add", ["b", "k"], ["y"]),
    ]
    inits = [
        tensor("w", rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32)),
        *bn_initializers("bn", bn_stats(rng, C)),
        tensor("k", np.zeros((C, 5, 7), np.float32)),
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [vinfo("y", TensorProto.FLOAT, ["N", C, 5, 7])],
        inits,
    )


def test_model_that_runs_at_no_size_stays_unverified(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(never_runs(), src)
    code, out, err = invoke(str(src), "-o", str(tmp_path / "o.onnx"), "--json")
    assert code == 4, err
    v = json.loads(out)["models"][0]["verification"]
    assert v["status"] == "unverified" and v["input_shapes"] == {}
    assert "run as 1x3x16x16 (default for unknown dims; set --input-shape x:DIMS)" in v["reason"]
    assert "32" not in v["reason"]


def test_given_input_shape_is_not_changed(tmp_path: Path) -> None:
    """--input-shape is the user's choice: no other size is tried."""
    src = tmp_path / "det.onnx"
    onnx.save(pyramid(), src)
    code, out, err = invoke(
        str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "x:1x3x16x16", "--json"
    )
    assert code == 4, err
    assert "2 by 4" in json.loads(out)["models"][0]["verification"]["reason"]


def _sizes(
    specs: list[InputSpec], ago: float = 0.0, each: float = 0.0, **request: Any
) -> list[int]:
    """The sizes tried after a failure at 16 that took 0.01 s, each try taking ``each`` s."""
    full = {"input_shapes": {}, "inputs": None, "backend": "onnxruntime", **request}
    failure = BackendError("broadcast")
    started = time.monotonic() - ago
    tried = []
    for dim, _ in samples._larger_sizes(specs, full, failure, 0.01, started):
        tried.append(dim)
        time.sleep(each)
    return tried


def test_larger_sizes_are_bounded() -> None:
    image = [InputSpec("x", 1, ("N", 3, "H", "W"))]
    assert _sizes(image, timeout=None) == [32, 64, 128, 224]
    assert _sizes(image, timeout=600.0) == [32, 64, 128, 224]
    # the estimated end of the next try (the last one's time by the inputs' growth) is past
    # half the timeout: no (more) tries
    assert _sizes(image, ago=10.0, timeout=10.0) == []
    # 0.04 s estimated for 32 fits in 0.25 s; 32 took 0.1 s, so 64 would take 0.4 s
    assert _sizes(image, each=0.1, timeout=0.5) == [32]
    volume = [InputSpec("v", 1, ("N", "C", "D", "H", "W"))]
    assert _sizes(volume, timeout=None) == [32, 64]  # 128^4 elements would pass 2^24
    assert not samples._may_enlarge(image, {"backend": "onnx.reference", "inputs": None})
    fixed = {"backend": "onnxruntime", "inputs": None, "input_shapes": {"x": [1, 3, 8, 8]}}
    assert not samples._may_enlarge(image, fixed)
