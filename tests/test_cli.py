"""The command line contract: every command, every bad input, exit codes, and no stray writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold.cli import app
from tests.builders import bn_initializers, bn_node, bn_params, count_ops, make_model, tensor, vinfo

runner = CliRunner()


def conv_bn_model(seed: int = 0, *, foldable: bool = True) -> onnx.ModelProto:
    """Conv -> BN (foldable) -> Relu -> BN (not foldable), dynamic batch."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "b1", "bn1"),
        helper.make_node("Relu", ["b1"], ["r"], name="relu"),
        bn_node("r", "y", "bn2"),
    ]
    if not foldable:
        nodes[0] = helper.make_node("Relu", ["x"], ["c"], name="conv")
        nodes[1] = bn_node("c", "b1", "bn1")
    inits = [tensor("w", w)] if foldable else []
    inits += bn_initializers("bn1", bn_params(rng, 4 if foldable else 3))
    inits += bn_initializers("bn2", bn_params(rng, 4 if foldable else 3))
    c = 4 if foldable else 3
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [vinfo("y", 1, ["N", c, 8, 8])],
        inits,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "net.onnx"
    onnx.save(conv_bn_model(), path)
    before = digest(path)
    yield path
    assert digest(path) == before, "the input model was modified"


def invoke(*args: str, columns: int = 200) -> tuple[int, str, str]:
    """Run the CLI; the report is on stdout, progress, warnings and errors on stderr."""
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


# -- fold ---------------------------------------------------------------------------------------


def test_fold_writes_verified_model_beside_input(model: Path) -> None:
    code, out, err = invoke(str(model))
    assert code == 0, err
    folded = model.with_name("net.folded.onnx")
    assert folded.is_file()
    m = onnx.load(folded)
    assert count_ops(m, "BatchNormalization") == 1  # the one after Relu stays
    assert "folded 1 of 2 BatchNormalization" in out
    assert "verification passed" in out
    assert err == ""  # the report goes to stdout; stderr only has warnings and errors
    assert files(model.parent) == {"net.onnx", "net.folded.onnx"}  # no temp files left


def test_fold_json_document(model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.onnx"
    code, out, _ = invoke(str(model), "-o", str(dst), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["command"] == "fold" and doc["exit_code"] == 0
    assert doc["summary"] == {
        "models": 1,
        "errors": 0,
        "bn_total": 2,
        "bn_folded": 1,
        "folded": 1,
        "skipped": 1,
        "counts": {
            "batchnorm": {"folded": 1, "total": 2},
            "scale": {"folded": 0, "total": 0},
            "bias": {"folded": 0, "total": 0},
        },
        "statuses": {"folded": 1},
    }
    entry = doc["models"][0]
    assert entry["output"] == str(dst) and entry["written"] == [str(dst)]
    assert entry["status"] == "folded" and entry["error"] is None
    decisions = entry["report"]["decisions"]
    assert [d["status"] for d in decisions] == ["folded", "skipped"]
    assert decisions[1]["reason"] == "unsupported_producer"
    v = entry["verification"]
    assert v["status"] == "passed" and v["backend"] == "onnxruntime"
    assert v["outputs"][0]["name"] == "y" and v["outputs"][0]["max_abs"] < 1e-4


def test_nothing_to_fold_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    onnx.save(conv_bn_model(foldable=False), path)
    code, out, err = invoke(str(path), "--json")
    assert code == 0, err
    entry = json.loads(out)["models"][0]
    assert entry["status"] == "unchanged" and entry["report"]["folded"] == 0
    assert entry["verification"] is None


def test_no_verify_and_quiet(model: Path) -> None:
    code, out, err = invoke(str(model), "--no-verify", "-q")
    assert code == 0 and out == "" and err == ""
    assert model.with_name("net.folded.onnx").is_file()


def test_output_equal_to_input_is_refused(model: Path) -> None:
    code, _, err = invoke(str(model), "-o", str(model))
    assert code == 2
    assert "would overwrite the input" in err and str(model) in err


def test_in_place_overwrites_only_with_flag(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), path)
    code, _, err = invoke(str(path), "--in-place")
    assert code == 0, err
    assert count_ops(onnx.load(path), "BatchNormalization") == 1
    assert files(tmp_path) == {"m.onnx"}


def test_in_place_with_output_is_a_usage_error(model: Path, tmp_path: Path) -> None:
    code, _, err = invoke(str(model), "--in-place", "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "contradict" in err


def test_unknown_option_is_a_usage_error(model: Path) -> None:
    code, _, _ = invoke(str(model), "--no-such-option")
    assert code == 2
    assert not model.with_name("net.folded.onnx").exists()


# -- inspect / check ----------------------------------------------------------------------------


def test_inspect_lists_every_bn_and_writes_nothing(model: Path) -> None:
    code, out, err = invoke("inspect", str(model), "--json")
    assert code == 0, err
    entry = json.loads(out)["models"][0]
    assert entry["status"] == "inspected" and entry["written"] == []
    assert [d["node"] for d in entry["report"]["decisions"]] == ["bn1_bn", "bn2_bn"]
    assert files(model.parent) == {"net.onnx"}
    code, out, _ = invoke("inspect", str(model))
    assert code == 0 and "bn2_bn" in out and "unsupported_producer" in out


def test_check_gates_on_foldable_bn(model: Path, tmp_path: Path) -> None:
    code, out, _ = invoke("check", str(model), "--json")
    assert code == 1
    assert json.loads(out)["models"][0]["status"] == "foldable"
    dst = tmp_path / "clean.onnx"
    assert invoke(str(model), "-o", str(dst), "-q")[0] == 0
    code, out, _ = invoke("check", str(dst))
    assert code == 0 and "clean" in out
    assert not (tmp_path / "clean.folded.onnx").exists()


# -- verify -------------------------------------------------------------------------------------


def test_verify_command_passes_and_fails(model: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    assert invoke(str(model), "-o", str(good), "-q")[0] == 0
    code, out, _ = invoke("verify", str(model), str(good), "--json")
    assert code == 0
    assert json.loads(out)["verification"]["status"] == "passed"

    bad = onnx.load(good)
    w = next(t for t in bad.graph.initializer if t.name.startswith("w"))
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[2] *= 1.5  # one output channel 1.5x too large
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    code, out, _ = invoke("verify", str(model), str(bad_path), "--json")
    assert code == 1
    v = json.loads(out)["verification"]
    assert v["status"] == "failed" and not v["outputs"][0]["passed"]
    assert v["outputs"][0]["mismatched"] > 0


def test_failed_verification_writes_nothing_unless_forced(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.numerics.arith as numerics

    real = numerics.folded_bias

    def broken(*args: np.ndarray) -> np.ndarray:
        bias: np.ndarray = real(*args).copy()
        bias[0] = -bias[0] + 1.0  # sign flipped in one channel of the folded bias
        return bias

    monkeypatch.setattr(numerics, "folded_bias", broken)
    dst = tmp_path / "out.onnx"
    code, _, err = invoke(str(model), "-o", str(dst))
    assert code == 1
    assert "differ" in err and "not written" in err
    assert not dst.exists()
    assert files(tmp_path) == {"net.onnx"}
    code, out, _ = invoke(str(model), "-o", str(dst), "--force", "--json")
    assert code == 1 and dst.exists()
    assert json.loads(out)["models"][0]["status"] == "verification_failed"


def test_input_shape_and_samples(model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.onnx"
    code, out, err = invoke(
        str(model), "-o", str(dst), "--input-shape", "x:2x3x8x8", "--samples", "2", "--json"
    )
    assert code == 0, err
    v = json.loads(out)["models"][0]["verification"]
    assert v["input_shapes"] == {"x": [2, 3, 8, 8]} and v["samples"] == 2


@pytest.mark.parametrize(
    "shape",
    ["x:1x3", "nope:1x3x8x8", "x:1x4x8x8", "x:axb", "x"],
)
def test_bad_input_shape_is_a_usage_error(model: Path, tmp_path: Path, shape: str) -> None:
    dst = tmp_path / "o.onnx"
    code, _, err = invoke(str(model), "-o", str(dst), "--input-shape", shape)
    assert code == 2, err
    assert "input" in err.lower() and "Traceback" not in err
    assert not dst.exists()


def test_inputs_npz(model: Path, tmp_path: Path) -> None:
    good = tmp_path / "data.npz"
    np.savez(good, x=np.ones((1, 3, 8, 8), np.float32))
    dst = tmp_path / "o.onnx"
    code, out, err = invoke(str(model), "-o", str(dst), "--inputs", str(good), "--json")
    assert code == 0, err
    assert json.loads(out)["models"][0]["verification"]["input_shapes"] == {"x": [1, 3, 8, 8]}
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.ones((1, 3, 8, 8), np.float32))
    dst.unlink()
    code, _, err = invoke(str(model), "-o", str(dst), "--inputs", str(bad))
    assert code == 2 and "bad.npz" in err
    assert not dst.exists()


def test_model_nothing_can_run_is_written_unverified(tmp_path: Path) -> None:
    """A custom-domain op: neither onnxruntime nor onnx.reference can run it."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "b", "bn"),
        helper.make_node("Mystery", ["b"], ["y"], name="mystery", domain="com.example"),
    ]
    inits = [tensor("w", rng.normal(size=(2, 2, 1, 1)).astype(np.float32))]
    inits += bn_initializers("bn", bn_params(rng, 2))
    m = make_model(
        nodes,
        [vinfo("x", 1, [1, 2, 4, 4])],
        [vinfo("y", 1, None)],
        inits,
        extra_opsets=[("com.example", 1)],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(m, path)
    code, out, err = invoke(str(path), "--json")
    assert code == 4, err  # written, but unverified
    entry = json.loads(out)["models"][0]
    assert entry["exit_code"] == 4 and json.loads(out)["exit_code"] == 4
    assert entry["status"] == "unverified" and entry["verification"]["reason"]
    assert "unverified" in err
    assert Path(entry["output"]).is_file()
    Path(entry["output"]).unlink()
    code, _, err = invoke(str(path), "--require-verified")
    assert code == 1 and "could not be verified" in err
    assert not path.with_name("custom.folded.onnx").exists()


# -- batches ------------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    onnx.save(conv_bn_model(1), root / "a.onnx")
    onnx.save(conv_bn_model(2), root / "sub" / "b.onnx")
    (root / "broken.onnx").write_bytes(b"\x00not a model at all\xff" * 10)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_folder_batch_continues_past_a_broken_model(tmp_path: Path, jobs: str) -> None:
    src = tmp_path / "in"
    make_tree(src)
    before = {p: digest(p) for p in src.rglob("*.onnx")}
    out_dir = tmp_path / "out"
    code, out, err = invoke(str(src), "-o", str(out_dir), "--jobs", jobs, "--json")
    assert code == 3, err
    doc = json.loads(out)
    statuses = {Path(m["input"]).name: m["status"] for m in doc["models"]}
    assert statuses == {"a.onnx": "folded", "broken.onnx": "error", "b.onnx": "folded"}
    assert doc["summary"]["errors"] == 1 and doc["summary"]["folded"] == 2
    assert files(out_dir) == {"a.onnx", "sub", "sub/b.onnx"}
    assert {p: digest(p) for p in src.rglob("*.onnx")} == before
    broken = next(m for m in doc["models"] if m["status"] == "error")
    assert broken["error"]["type"] == "InputError" and broken["exit_code"] == 3
    assert "broken.onnx" in err


def test_batch_table_without_json(tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_tree(src)
    (src / "broken.onnx").unlink()
    code, out, err = invoke("check", str(src))
    assert code == 1 and "a.onnx" in out and "foldable" in out
    assert "[1/2]" in err  # progress (one plain line per model when piped) stays on stderr


def test_folder_without_models(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(str(tmp_path / "empty"))
    assert code == 3 and "no .onnx models" in err


# -- bad input: one line, exit 3, nothing written -----------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = conv_bn_model().SerializeToString()
    cases: dict[str, tuple[Path, str]] = {}

    def add(key: str, name: str, data: bytes | None, needle: str) -> None:
        path = tmp / name
        if data is not None:
            path.write_bytes(data)
        cases[key] = (path, needle)

    add("missing", "missing.onnx", None, "no such file")
    add("empty", "empty.onnx", b"", "empty")
    add("random", "random.onnx", np.random.default_rng(0).bytes(4096), "not a readable ONNX model")
    add("truncated", "truncated.onnx", good[: len(good) // 2], "not a readable ONNX model")
    add("text", "notes.onnx", b"this is a text file, not a model\n" * 20, "ONNX model")

    undefined = conv_bn_model()
    undefined.graph.node[0].input[1] = "nowhere"
    add(
        "undefined",
        "undefined.onnx",
        undefined.SerializeToString(),
        "nothing in the graph produces",
    )
    domain = conv_bn_model()
    domain.graph.node[2].domain = "com.unknown"
    add("domain", "domain.onnx", domain.SerializeToString(), "com.unknown")
    return cases


@pytest.mark.parametrize(
    "case", ["missing", "empty", "random", "truncated", "text", "undefined", "domain"]
)
@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
def test_bad_input_is_one_line_exit_3(tmp_path: Path, case: str, command: str) -> None:
    path, needle = _bad_inputs(tmp_path)[case]
    before = files(tmp_path)
    code, out, err = invoke(command, str(path))
    assert code == 3, err
    assert needle in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""
    assert files(tmp_path) == before


def test_bad_input_json_names_the_error(tmp_path: Path) -> None:
    path, _ = _bad_inputs(tmp_path)["truncated"]
    code, out, _ = invoke(str(path), "--json")
    assert code == 3
    entry = json.loads(out)["models"][0]
    assert entry["status"] == "error" and entry["error"]["type"] == "InputError"


def test_debug_shows_traceback(tmp_path: Path) -> None:
    path, _ = _bad_inputs(tmp_path)["truncated"]
    code, _, err = invoke(str(path), "--debug")
    assert code == 3 and "Traceback" in err


def test_missing_external_data(tmp_path: Path) -> None:
    m = conv_bn_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    code, _, err = invoke(str(path))
    assert code == 3 and "ext.onnx.data" in err and "missing" in err
    assert files(tmp_path) == {"ext.onnx"}


def test_unwritable_output_folder(model: Path) -> None:
    target = Path("/proc/bnfold-cannot-write-here/out.onnx")
    code, _, err = invoke(str(model), "-o", str(target))
    assert code == 3 and "cannot" in err and str(target) in err


def test_output_folder_is_a_file(model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = invoke(str(model), "-o", str(blocker / "out.onnx"))
    assert code == 3 and str(blocker) in err


def test_old_ir3_model_still_folds(tmp_path: Path) -> None:
    """IR 3 with initializers not listed as inputs fails onnx.checker but runs in onnxruntime."""
    m = conv_bn_model()
    m.ir_version = 3
    m.opset_import[0].version = 8
    path = tmp_path / "ir3.onnx"
    onnx.save(m, path)
    code, out, err = invoke(str(path), "--json")
    entry = json.loads(out)["models"][0]
    assert code == 0, err
    assert entry["report"]["folded"] >= 1
    assert entry["verification"]["status"] == "passed"


# -- the installed command ----------------------------------------------------------------------


def test_python_m_bnfold_version_and_exit_codes(model: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0 and run.stdout.startswith("bnfold ")
    run = subprocess.run(
        [sys.executable, "-m", "bnfold", "check", str(model)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 1 and "\x1b[" not in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "bnfold", str(model), "--bogus"], capture_output=True, text=True
    )
    assert run.returncode == 2


def test_json_document_also_for_command_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = invoke("check", str(tmp_path / "empty"), "--json")
    assert code == 3 and "no .onnx models" in err
    doc = json.loads(out)
    assert doc["exit_code"] == 3 and doc["models"] == [] and doc["error"]["type"] == "InputError"


def test_bare_bnfold_prints_readable_usage() -> None:
    """The first thing people type: the help with real line breaks (a usage error: exit 2)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnfold"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "\\x0a" not in proc.stderr and "Usage: bnfold" in proc.stderr
    assert len(proc.stderr.splitlines()) > 10 and "Commands:" in proc.stderr
    assert "  fold " in proc.stderr


def test_shell_completion_is_offered() -> None:
    """Typer's --show-completion prints a script for the shell; completion names commands."""
    import os

    shown = subprocess.run(
        [sys.executable, "-m", "bnfold", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SHELL": "/bin/bash"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "_bnfold_completion" in shown.stdout and "complete " in shown.stdout
    env = {**os.environ, "COMP_WORDS": "bnfold ch", "COMP_CWORD": "1"}
    env["_BNFOLD_COMPLETE"] = "complete_bash"
    exe = shutil.which("bnfold", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the bnfold console script is not installed beside this python")
    done = subprocess.run([exe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["check"], done
