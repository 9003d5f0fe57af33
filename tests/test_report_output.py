"""The report as a person reads it: on stdout, no wider than the terminal, reason codes whole,
many refusals summarised by reason, one vocabulary of counts, sizes and why a model grew."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold.cli import app
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo

runner = CliRunner()
C = 4


def invoke(*args: str, columns: int = 80) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def many_refusals(blocks: int = 14) -> onnx.ModelProto:
    """``blocks`` BNs after a Relu (unsupported_producer) with long names, one BN after a Conv
    whose output is also read by an Add (shared_output), and one that folds."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(blocks):
        nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu_{i}"))
        inits += bn_initializers(f"bn{i}", bn_params(rng, C))
        name = f"backbone.stage_{i}.block.a_rather_long_batchnorm_node_name_{i}"
        nodes.append(bn_node(f"r{i}", f"y{i}", f"bn{i}", name=name))
        x = f"y{i}"
    inits.append(tensor("w", rng.normal(0, 0.5, (C, C, 1, 1)).astype(np.float32)))
    inits += bn_initializers("s", bn_params(rng, C)) + bn_initializers("f", bn_params(rng, C))
    nodes += [
        helper.make_node("Conv", [x, "w"], ["c"], name="conv_shared"),
        bn_node("c", "sb", "s", name="bn_shared"),
        helper.make_node("Add", ["c", "sb"], ["a"], name="residual"),
        helper.make_node("Conv", ["a", "w"], ["c2"], name="conv_last"),
        bn_node("c2", "out", "f", name="bn_folds"),
    ]
    shape = [1, C, 4, 4]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, shape)],
        [vinfo("out", TensorProto.FLOAT, shape)],
        inits,
    )


@pytest.fixture
def crowded(tmp_path: Path) -> Path:
    path = tmp_path / "a_model_with_a_long_file_name_for_the_table.onnx"
    onnx.save(many_refusals(), path)
    return path


@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
@pytest.mark.parametrize("verbose", [False, True])
def test_no_line_is_wider_than_80_columns_and_codes_are_whole(
    crowded: Path, command: str, verbose: bool
) -> None:
    args = [command, str(crowded)] + (["-v"] if verbose else [])
    if command == "fold":
        args += ["--no-verify", "-o", str(crowded.with_name("out.onnx"))]
    code, out, err = invoke(*args)
    assert code == (1 if command == "check" else 0), err
    lines = out.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, out
    assert not any(line != line.rstrip() for line in lines)  # no trailing blanks either
    if command != "check":
        assert re.search(r"\bunsupported_producer\b", out) and re.search(r"\bshared_output\b", out)


def test_wide_terminals_get_a_table_that_fits(crowded: Path) -> None:
    code, out, _ = invoke("inspect", str(crowded), columns=120)
    assert code == 0
    assert "┃ node" in out and max(len(line) for line in out.splitlines()) <= 120
    assert "unsupported_producer" in out  # never cut to "unsupported_produ…"


def test_a_fold_with_many_refusals_is_summarised_by_reason(crowded: Path) -> None:
    code, out, _ = invoke(str(crowded), "--no-verify", "-o", str(crowded.with_name("o.onnx")))
    assert code == 0
    assert len(out.splitlines()) <= 25, out
    # the last BN after a Relu folds into the Conv after it; the other 13 stay
    assert "unsupported_producer  x13" in out and "shared_output         x1" in out
    assert "-v lists each node" in out
    assert out.count("backbone.stage_") == 1  # one example, not 14 rows
    code, out, _ = invoke(
        str(crowded), "--no-verify", "-v", "-o", str(crowded.with_name("o.onnx")), columns=200
    )
    assert code == 0 and out.count("backbone.stage_") == 14


def test_the_fix_is_shown_where_there_is_one(tmp_path: Path) -> None:
    """A reason that a user can do something about says what (training mode: export in eval)."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Relu", ["x"], ["r0"], name="relu")]
    inits = []
    for i in range(12):
        inits.append(tensor(f"w{i}", rng.normal(0, 0.5, (C, C, 1, 1)).astype(np.float32)))
        inits += bn_initializers(f"bn{i}", bn_params(rng, C))
        nodes.append(helper.make_node("Conv", [f"r{i}", f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        nodes.append(bn_node(f"c{i}", f"r{i + 1}", f"bn{i}", name=f"bn{i}", training_mode=1))
    shape = [1, C, 4, 4]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, shape)],
        [vinfo("r12", TensorProto.FLOAT, shape)],
        inits,
        opset=15,
    )
    path = tmp_path / "train.onnx"
    onnx.save(model, path)
    code, out, _ = invoke(str(path), "--no-verify", columns=200)
    assert code == 0 and "training_mode  x12" in out
    assert "fix: export the model in inference mode" in out


def keras_like() -> onnx.ModelProto:
    """Conv -> Mul -> Add (a BN written as scale layers) and MatMul -> Add (a Linear's bias)."""
    rng = np.random.default_rng(2)
    inits = [
        tensor("w", rng.normal(0, 0.5, (C, 3, 1, 1)).astype(np.float32)),
        tensor("m", rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32)),
        tensor("a", rng.normal(0, 1, (C, 1, 1)).astype(np.float32)),
        tensor("shape", np.array([1, C * 16], dtype=np.int64)),
        tensor("fc", rng.normal(0, 0.5, (C * 16, 5)).astype(np.float32)),
        tensor("fcb", rng.normal(0, 1, (5,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "m"], ["cm"], name="scale"),
        helper.make_node("Add", ["cm", "a"], ["ca"], name="shift"),
        helper.make_node("Reshape", ["ca", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "fcb"], ["y"], name="dense_bias"),
    ]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )


def test_every_command_counts_alike(tmp_path: Path) -> None:
    path = tmp_path / "keras.onnx"
    onnx.save(keras_like(), path)
    code, out, _ = invoke("inspect", str(path), "--json")
    report = json.loads(out)["models"][0]["report"]
    assert report["counts"] == {
        "batchnorm": {"folded": 0, "total": 0},
        "scale": {"folded": 2, "total": 2},
        "bias": {"folded": 1, "total": 1},
    }
    assert {d["node"]: d["kind"] for d in report["decisions"]} == {
        "scale": "scale",
        "shift": "scale",
        "dense_bias": "bias",
    }
    code, out, _ = invoke("check", str(path), columns=200)
    assert code == 1 and "2 foldable nodes remain (2 scale Mul/Add)" in out
    code, out, _ = invoke(str(path), "--no-verify", columns=200)
    assert code == 0 and "folded 2 of 2 scale Mul/Add, 1 of 1 bias Add" in out
    code, out, _ = invoke(str(path), "--no-verify", "--json", "-o", str(tmp_path / "o.onnx"))
    summary = json.loads(out)["summary"]
    assert summary["counts"]["scale"] == {"folded": 2, "total": 2}
    assert summary["counts"]["bias"] == {"folded": 1, "total": 1}


def computed_weight(channels: int = 64) -> onnx.ModelProto:
    """A Conv whose weight a ConstantOfShape makes at run time: a tiny file, a large weight."""
    rng = np.random.default_rng(3)
    shape = np.array([channels, channels, 3, 3], dtype=np.int64)
    nodes = [
        helper.make_node("Constant", [], ["wshape"], name="wshape", value=tensor("v", shape)),
        helper.make_node(
            "ConstantOfShape",
            ["wshape"],
            ["w"],
            name="fill",
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01]),
        ),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn", name="bn"),
    ]
    io = [1, channels, 4, 4]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, io)],
        [vinfo("y", TensorProto.FLOAT, io)],
        bn_initializers("bn", bn_params(rng, channels)),
    )


def test_a_fold_reports_sizes_and_why_the_model_grew(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(computed_weight(), path)
    out_path = tmp_path / "out.onnx"
    code, out, err = invoke(str(path), "-o", str(out_path), columns=200)
    assert code == 0, err
    before, after = path.stat().st_size, out_path.stat().st_size
    assert after > 2 * before
    assert re.search(r"; 1\.\d kB -> 14\d\.\d kB", out), out
    assert "the model grew" in out and "constant subgraphs computed at run time" in out
    code, out, _ = invoke(str(path), "-o", str(out_path), "--json")
    entry = json.loads(out)["models"][0]
    assert entry["size_before"] == before and entry["size_after"] == after
    assert entry["report"]["materialized_bytes"] == 64 * 64 * 9 * 4


def test_json_keeps_stdout_to_the_document(crowded: Path) -> None:
    code, out, err = invoke(str(crowded), "--json", "-o", str(crowded.with_name("o.onnx")))
    assert code == 0 and err == ""
    assert json.loads(out)["command"] == "fold"  # nothing else on stdout
