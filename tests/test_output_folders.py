"""Output folders are created only when a model is written into them: a refused input, a batch
of refused inputs, or a fold that fails verification leaves no folder behind (and a folder that
was there before is never removed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold.cli.app import app
from tests.builders import bn_initializers, bn_node, bn_stats, make_model, tensor, vinfo

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def conv_bn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y", "bn")]
    inits = [
        tensor("w", rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)),
        *bn_initializers("bn", bn_stats(rng, 4)),
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )


def everything(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """in/bad.onnx, in/sub/bad2.onnx (not ONNX) and in/good/good.onnx."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "good").mkdir()
    (tmp_path / "in" / "bad.onnx").write_bytes(b"not a model\n")
    (tmp_path / "in" / "sub" / "bad2.onnx").write_bytes(b"\x07garbage")
    onnx.save(conv_bn(), tmp_path / "in" / "good" / "good.onnx")
    return tmp_path


def test_refused_input_creates_no_output_folder(inputs: Path) -> None:
    before = everything(inputs)
    out = inputs / "out" / "deeper" / "bad.onnx"
    code, _, err = invoke(str(inputs / "in" / "bad.onnx"), "-o", str(out))
    assert code == 3, err
    assert everything(inputs) == before


@pytest.mark.parametrize("how", ["folder-argument", "file-arguments"])
def test_batch_of_refused_inputs_creates_no_output_folder(inputs: Path, how: str) -> None:
    (inputs / "in" / "good" / "good.onnx").unlink()
    before = everything(inputs)
    models = (
        [str(inputs / "in")]
        if how == "folder-argument"
        else [str(inputs / "in" / "bad.onnx"), str(inputs / "in" / "sub" / "bad2.onnx")]
    )
    code, out, err = invoke(*models, "-o", str(inputs / "outdir") + "/", "--json")
    assert code == 3, err
    doc = json.loads(out)
    assert [m["status"] for m in doc["models"]] == ["error", "error"]
    assert everything(inputs) == before


def test_batch_creates_only_the_folders_it_writes_into(inputs: Path) -> None:
    code, out, err = invoke(str(inputs / "in"), "-o", str(inputs / "outdir"), "--json")
    assert code == 3, err  # the worst of the models: two are not ONNX
    statuses = {m["input"]: m["status"] for m in json.loads(out)["models"]}
    assert statuses[str(inputs / "in" / "good" / "good.onnx")] == "folded"
    assert everything(inputs / "outdir") == {"good", "good/good.onnx"}  # no sub/


def test_failed_verification_removes_the_folders_it_created(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.numerics.arith as numerics

    real = numerics.folded_bias

    def broken(*args: np.ndarray) -> np.ndarray:
        bias: np.ndarray = real(*args) * 1.5
        return bias

    monkeypatch.setattr(numerics, "folded_bias", broken)
    (inputs / "kept").mkdir()  # a folder that was there is not removed
    before = everything(inputs)
    src = inputs / "in" / "good" / "good.onnx"
    dst = inputs / "kept" / "new" / "deeper" / "good.onnx"
    code, _, err = invoke(str(src), "-o", str(dst))
    assert code == 1 and "not written" in err, err
    assert everything(inputs) == before
    code, _, err = invoke(str(src), "-o", str(dst), "--force")  # written: the folders stay
    assert code == 1 and dst.is_file(), err


def test_output_folder_under_a_file_is_refused_before_any_model(inputs: Path) -> None:
    blocker = inputs / "file.txt"
    blocker.write_text("x")
    before = everything(inputs)
    code, out, err = invoke(str(inputs / "in"), "-o", str(blocker / "sub") + "/", "--json")
    assert code == 3 and "cannot create the output folder (Not a directory)" in err, err
    assert json.loads(out)["models"] == []
    assert everything(inputs) == before


def test_parallel_batch_writes_into_one_new_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        onnx.save(conv_bn(), tmp_path / "in" / f"m{i}.onnx")
    (tmp_path / "in" / "bad.onnx").write_bytes(b"nope")
    code, _, err = invoke(str(tmp_path / "in"), "-o", str(tmp_path / "o" / "p"), "-j", "2", "-q")
    assert code == 3, err
    assert everything(tmp_path / "o") == {"p", "p/m0.onnx", "p/m1.onnx", "p/m2.onnx"}
