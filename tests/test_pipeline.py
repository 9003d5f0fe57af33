"""What a pipeline relies on (issue 12): the check gate, exit codes, one JSON document per
invocation that validates against ``bnfold schema``, quiet and progress output, fast --help,
the pre-commit hook, and the Python API taking paths."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

import bnfold
from bnfold.cli import app
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str, columns: int = 200) -> tuple[int, str, str]:
    """Run the CLI; the report is on stdout, progress, warnings and errors on stderr."""
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def conv_bn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN (foldable) -> Relu -> BN (not foldable)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "b1", "bn1"),
        helper.make_node("Relu", ["b1"], ["r"], name="relu"),
        bn_node("r", "y", "bn2"),
    ]
    inits = [tensor("w", rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32))]
    inits += bn_initializers("bn1", bn_params(rng, 4)) + bn_initializers("bn2", bn_params(rng, 4))
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        inits,
    )


def linear(scale: bool = False) -> onnx.ModelProto:
    """A Keras/TF Linear layer: MatMul + bias Add (with ``scale``, a Mul between them)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="dense/MatMul")]
    inits = [tensor("w", rng.normal(size=(8, 4)).astype(np.float32))]
    if scale:
        nodes.append(helper.make_node("Mul", ["m", "s"], ["ms"], name="scale"))
        inits.append(tensor("s", rng.normal(size=(4,)).astype(np.float32)))
    nodes.append(helper.make_node("Add", [nodes[-1].output[0], "b"], ["y"], name="dense/BiasAdd"))
    inits.append(tensor("b", rng.normal(size=(4,)).astype(np.float32)))
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 8])],
        [vinfo("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )


def conv_mul_add() -> onnx.ModelProto:
    """Conv -> Mul -> Add per channel: a Caffe/MXNet scale layer, a BN in all but name."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="scale_mul"),
        helper.make_node("Add", ["m", "t"], ["y"], name="scale_add"),
    ]
    inits = [
        tensor("w", rng.normal(size=(4, 3, 1, 1)).astype(np.float32)),
        tensor("s", rng.normal(size=(4, 1, 1)).astype(np.float32)),
        tensor("t", rng.normal(size=(4, 1, 1)).astype(np.float32)),
    ]
    return make_model(nodes, [vinfo("x", 1, [1, 3, 4, 4])], [vinfo("y", 1, [1, 4, 4, 4])], inits)


@pytest.fixture
def unfolded(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(conv_bn(), path)
    return path


@pytest.fixture
def folded(unfolded: Path) -> Path:
    assert invoke(str(unfolded), "-q")[0] == 0
    return unfolded.with_name("net.folded.onnx")


# -- check: what it reads and what it gates on ----------------------------------------------------


def test_check_reads_folded_outputs_in_a_folder(tmp_path: Path, folded: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "net.folded.onnx").write_bytes(folded.read_bytes())
    code, out, err = invoke("check", str(only), "--json")
    assert code == 0, err
    assert [m["input"] for m in json.loads(out)["models"]] == [str(only / "net.folded.onnx")]
    code, out, _ = invoke("check", str(tmp_path), "--json")
    statuses = {
        str(Path(m["input"]).relative_to(tmp_path)): m["status"] for m in json.loads(out)["models"]
    }
    assert code == 1 and statuses == {
        "net.onnx": "foldable",
        "net.folded.onnx": "clean",
        str(Path("only") / "net.folded.onnx"): "clean",
    }
    # fold still skips its own outputs in a folder
    code, out, _ = invoke(str(only), "--json", "--no-verify")
    assert code == 3 and json.loads(out)["error"]["type"] == "InputError"


def test_check_passes_a_keras_linear_layer_and_fails_a_scale_layer(tmp_path: Path) -> None:
    onnx.save(linear(), tmp_path / "keras.onnx")
    onnx.save(linear(scale=True), tmp_path / "scaled.onnx")
    onnx.save(conv_mul_add(), tmp_path / "caffe.onnx")
    code, out, err = invoke("check", str(tmp_path / "keras.onnx"))
    assert code == 0 and "keras.onnx: clean" in out, err
    code, out, err = invoke("check", str(tmp_path / "scaled.onnx"))
    assert code == 1 and "2 foldable nodes remain (2 scale Mul/Add)" in out, err
    code, out, err = invoke("check", str(tmp_path / "caffe.onnx"))
    assert code == 1 and "2 foldable nodes remain (2 scale Mul/Add)" in out, err
    # folding still folds the bias into a Gemm; the gate just does not count it
    code, out, _ = invoke("inspect", str(tmp_path / "keras.onnx"), "--json")
    assert code == 0 and json.loads(out)["models"][0]["report"]["folded"] == 1


def test_quiet_check_prints_one_line_per_failing_model(tmp_path: Path, folded: Path) -> None:
    code, out, err = invoke("-q", "check", str(folded.with_name("net.onnx")))
    assert code == 1 and err == ""
    assert out.strip().splitlines() == [
        f"{folded.with_name('net.onnx')}: 1 foldable node remains (1 BatchNormalization)"
    ]
    code, out, err = invoke("check", "-q", str(folded))
    assert code == 0 and out == err == ""
    code, out, err = invoke("-q", "check", str(tmp_path))
    assert code == 1 and len(out.strip().splitlines()) == 1 and "net.onnx: 1 foldable" in out


@pytest.mark.parametrize(
    "args",
    [
        ["-q", "check", "{m}"],
        ["--json", "check", "{m}"],
        ["check", "{m}", "--json"],
        ["--debug", "-q", "inspect", "{m}"],
    ],
)
def test_options_before_or_after_the_command(unfolded: Path, args: list[str]) -> None:
    code, out, err = invoke(*(a.format(m=unfolded) for a in args))
    assert code == (0 if "inspect" in args else 1), err
    assert "no such file" not in err
    if "--json" in args:
        assert json.loads(out)["command"] == "check"


def test_value_options_before_the_model_still_mean_fold(unfolded: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.onnx"
    code, _, err = invoke("-o", str(dst), "--timeout", "60", str(unfolded), "-q")
    assert code == 0 and dst.is_file(), err


# -- exit code 4 --------------------------------------------------------------------------------


def test_verification_timeout_is_written_unverified_exit_4(unfolded: Path) -> None:
    out_path = unfolded.with_name("net.folded.onnx")
    code, out, err = invoke(str(unfolded), "--timeout", "0.01", "--json")
    assert code == 4, err
    doc = json.loads(out)
    assert doc["exit_code"] == 4 and doc["models"][0]["status"] == "unverified"
    assert "timed out" in doc["models"][0]["verification"]["reason"]
    assert out_path.is_file() and "written unverified" in err
    out_path.unlink()
    code, out, err = invoke(str(unfolded), "--timeout", "0.01", "--require-verified")
    assert code == 1 and not out_path.exists(), err


# -- JSON: one document, always; and the schema -------------------------------------------------


def schema() -> dict[str, Any]:
    code, out, _ = invoke("schema")
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["fold", "{m}", "--bogus", "--json"], 2),
        (["check", "--json"], 2),
        (["--json"], 2),
        (["verify", "{m}", "--json"], 2),
        (["fold", "{m}", "--samples", "0", "--json"], 2),
        (["inspect", "{m}/nope.onnx", "--json"], 3),
        (["fold", "{m}", "--no-verify", "--require-verified", "--json"], 2),
    ],
)
def test_usage_errors_print_one_json_document(unfolded: Path, args: list[str], code: int) -> None:
    got, out, err = invoke(*(a.format(m=unfolded) for a in args))
    assert got == code, err
    doc = json.loads(out)  # exactly one document: json.loads refuses trailing data
    assert doc["exit_code"] == code and doc["schema_version"] == 1
    error = doc["error"] if "error" in doc else doc["models"][0]["error"]
    assert error["type"] in ("UsageError", "InputError") and error["message"]
    jsonschema.validate(doc, schema())


def test_every_document_validates_against_the_schema(
    unfolded: Path, folded: Path, tmp_path: Path
) -> None:
    spec = schema()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    docs = []
    for args in (
        [str(unfolded), "-o", str(tmp_path / "x.onnx")],
        [str(unfolded), "--timeout", "0.01", "-o", str(tmp_path / "y.onnx")],
        ["inspect", str(unfolded)],
        ["check", str(tmp_path)],
        ["verify", str(unfolded), str(folded)],
        ["bench", str(unfolded), "-n", "2", "--warmup", "0", "--max-seconds", "1"],
        ["bench", str(unfolded), str(broken), "-n", "2", "--warmup", "0", "--max-seconds", "1"],
        ["bench", str(unfolded), "--level", "fastest"],
        ["check", str(tmp_path / "missing")],
    ):
        code, out, err = invoke(*args, "--json")
        doc = json.loads(out)
        assert doc["exit_code"] == code and "schema_version" in doc, (args, err)
        jsonschema.validate(doc, spec)
        docs.append(doc["command"])
    assert docs == [
        "fold",
        "fold",
        "inspect",
        "check",
        "verify",
        "bench",
        "bench",
        "bench",
        "check",
    ]


# -- writes: -o FILE for several models, --in-place with nothing to fold ------------------------


def test_in_place_with_nothing_to_fold_keeps_bytes_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "keras.onnx"
    onnx.save(linear(), path)
    folded = tmp_path / "once.onnx"
    assert invoke(str(path), "-o", str(folded), "-q")[0] == 0  # MatMul + Add -> one Gemm
    before, stat = folded.read_bytes(), folded.stat()
    os.utime(folded, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))
    mtime = folded.stat().st_mtime_ns
    code, out, err = invoke(str(folded), "--in-place", "--json")
    assert code == 0, err
    entry = json.loads(out)["models"][0]
    assert entry["status"] == "unchanged" and entry["written"] == []
    assert folded.read_bytes() == before and folded.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras.onnx", "once.onnx"]


def test_one_output_file_for_several_models_writes_nothing(tmp_path: Path) -> None:
    onnx.save(conv_bn(0), tmp_path / "a.onnx")
    onnx.save(conv_bn(1), tmp_path / "b.onnx")
    code, out, _ = invoke(
        str(tmp_path / "a.onnx"),
        str(tmp_path / "b.onnx"),
        "-o",
        str(tmp_path / "x.onnx"),
        "--json",
    )
    assert code == 2 and json.loads(out)["exit_code"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


# -- human output ---------------------------------------------------------------------------------


def test_not_folded_table_says_how_many(unfolded: Path) -> None:
    code, out, _ = invoke(str(unfolded), "--no-verify")
    assert code == 0
    assert f"{unfolded}: 1 not folded" in out and "folded 1 of 2 BatchNormalization" in out


def test_batch_progress_outside_a_terminal_is_one_plain_line_per_model(tmp_path: Path) -> None:
    for i in range(3):
        onnx.save(conv_bn(i), tmp_path / f"m{i}.onnx")
    code, _, err = invoke(str(tmp_path), "-o", str(tmp_path / "out"), "--no-verify")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert lines == [f"[{i + 1}/3] {tmp_path / f'm{i}.onnx'}: folded" for i in range(3)]
    assert "\r" not in err and "\x1b" not in err
    code, _, err = invoke(str(tmp_path), "-o", str(tmp_path / "out2"), "--no-verify", "-q")
    assert code == 0 and err == ""


def test_batch_progress_in_a_terminal_names_the_current_model() -> None:
    from rich.console import Console

    from bnfold.cli.ui import Ui

    ui = Ui()
    buffer = io.StringIO()
    ui._err = Console(file=buffer, force_terminal=True, width=120)
    with ui.progress(["a.onnx", "b.onnx", "c.onnx"], "folding") as done:
        done(0, "folded")
        done(1, "folded")
    text = buffer.getvalue()
    assert "folding 0/3 a.onnx" in text and "folding 2/3 c.onnx" in text, repr(text)


# -- fast --help ----------------------------------------------------------------------------------

HEAVY = re.compile(r"import time:.*\|\s+(onnx|onnxruntime|numpy|google\.protobuf)(\.|$)")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["fold", "--help"],
        ["check", "--help"],
        ["verify", "--help"],
        ["bench", "--help"],
        ["schema", "--help"],
    ],
)
def test_help_and_version_import_no_onnx_numpy_or_protobuf(args: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bnfold", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    heavy = [line for line in run.stderr.splitlines() if HEAVY.search(line)]
    assert heavy == []
    assert "bnfold.cli" in run.stderr  # importtime did report


# -- pre-commit hook ------------------------------------------------------------------------------


def test_pre_commit_hook_entry_fails_unfolded_and_passes_folded(
    unfolded: Path, folded: Path
) -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    assert re.search(r"^- id: bnfold-check$", text, re.M)
    entry = shlex.split(re.search(r"^\s+entry: (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    args = shlex.split(m.group(1)) if (m := re.search(r"^\s+args: \[(.*)\]$", text, re.M)) else []
    args = [a.strip(",\"'") for a in args]
    assert entry[0] == "bnfold" and entry[1] == "check"
    command = [sys.executable, "-m", "bnfold", *entry[1:], *args]
    bad = subprocess.run([*command, str(unfolded)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "foldable node remains" in bad.stdout
    good = subprocess.run([*command, str(folded)], capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stderr


# -- API ------------------------------------------------------------------------------------------


def test_fold_model_takes_a_path(unfolded: Path) -> None:
    from_path = bnfold.fold_model(unfolded)
    from_proto = bnfold.fold_model(onnx.load(unfolded))
    assert from_path.report.to_dict() == from_proto.report.to_dict()
    assert from_path.report.bn_folded == 1
    assert bnfold.fold_model(str(unfolded)).report.folded == 1
    with pytest.raises(TypeError, match="ModelProto or a path"):
        bnfold.fold_model(b"not a model")  # type: ignore[arg-type]


def test_option_types_are_exported() -> None:
    for name in ("VerifyOptions", "FoldRule", "DEFAULT_RULES", "FileStatus"):
        assert name in bnfold.__all__
        getattr(bnfold, name)
    opts = bnfold.VerifyOptions(samples=2)
    assert opts.samples == 2


def test_api_errors_do_not_name_command_line_flags(unfolded: Path, tmp_path: Path) -> None:
    with pytest.raises(bnfold.UsageError) as exc:
        bnfold.fold_file(unfolded, unfolded)
    assert "--" not in str(exc.value) and "-o/" not in str(exc.value)
    with pytest.raises(bnfold.BnfoldError) as exc:
        bnfold.fold_file(
            unfolded, tmp_path / "z.onnx", verify=bnfold.VerifyOptions(input_shapes={"nope": [1]})
        )
    assert "--" not in str(exc.value) and "input_shapes" in str(exc.value)
    assert "--input-shape" in exc.value.cli_message  # the CLI still names its flag
    code, _, err = invoke(str(unfolded), "--input-shape", "nope:1")
    assert code == 2 and "--input-shape" in err


def test_cli_modules_are_small() -> None:
    sizes = {
        p.name: len(p.read_text().splitlines()) for p in (ROOT / "bnfold" / "cli").glob("*.py")
    }
    assert len(sizes) >= 6 and max(sizes.values()) <= 300, sizes


def test_readme_documents_exit_4_and_the_gpu_install() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^\| 4 \| written but \*\*unverified\*\*", readme, re.M)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    line = next(x for x in readme.splitlines() if x.startswith("pip install --no-deps . && "))
    named = shlex.split(line.split("&&", 1)[1])[2:]
    assert sorted(named) == sorted(d for d in deps if not d.startswith("onnxruntime"))
    assert "action/steps.sh" in (ROOT / "action.yml").read_text()  # tests/test_action.py
    assert '"$mode" --json' in (ROOT / "action" / "steps.sh").read_text()
