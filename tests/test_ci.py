"""What a CI sees (issue 21): the fold record in inspect/check/verify, GitHub workflow commands
and the job summary, JUnit XML, --no-record."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import onnx
import pytest
from typer.testing import CliRunner

from bnfold.cli.app import app
from bnfold.cli.ci import escape_data, escape_property
from bnfold.cli.schema import SCHEMA
from tests.test_record import conv_bn, sha256

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def outside_github(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests may themselves run in GitHub Actions: start from a plain environment."""
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    """An unfolded model and bnfold's folded output of it."""
    src = tmp_path / "net.onnx"
    onnx.save(conv_bn(), src)
    code, _, err = invoke(str(src), "-q")
    assert code == 0, err
    return src, tmp_path / "net.folded.onnx"


# -- the record, shown ----------------------------------------------------------------------------


def test_check_and_inspect_show_the_record(models: tuple[Path, Path]) -> None:
    src, folded = models
    prefix = sha256(src)[:12]
    line = f"folded by bnfold 0.1.0 from {prefix}, verified: worst error "
    for command in ("check", "inspect"):
        code, out, err = invoke(command, str(folded))
        assert code == 0 and line in out, err
        code, out, err = invoke(command, str(folded), "--json")
        doc = json.loads(out)
        jsonschema.validate(doc, SCHEMA)
        record = doc["models"][0]["record"]
        assert record["source"]["sha256"] == sha256(src)
        assert record["verification"]["status"] == "passed"
    code, out, err = invoke("check", str(src), "--json")
    assert code == 1 and json.loads(out)["models"][0]["record"] is None
    assert "folded by" not in invoke("check", str(src))[2]


def test_fold_json_carries_the_record_it_wrote(models: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = models
    code, out, _ = invoke(str(src), "-o", str(tmp_path / "o.onnx"), "--json")
    assert code == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    record = doc["models"][0]["record"]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "o.onnx").metadata_props}
    assert json.loads(meta["bnfold"]) == record
    assert doc["models"][0]["verification"]["providers"] == ["CPUExecutionProvider"]


def test_no_record_flag(models: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = models
    out = tmp_path / "bare.onnx"
    code, doc, err = invoke(str(src), "-o", str(out), "--no-record", "--json")
    assert code == 0, err
    assert json.loads(doc)["models"][0]["record"] is None
    assert [p.key for p in onnx.load(out).metadata_props] == ["author"]


def test_verify_checks_the_record_against_the_source(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    src, folded = models
    code, out, err = invoke("verify", str(src), str(folded), "--json")
    assert code == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["record"] == {
        "status": "match",
        "recorded_sha256": sha256(src),
        "original_sha256": sha256(src),
        "detail": None,
    }
    # another source file that computes the same: outputs match, the record does not
    other = tmp_path / "other.onnx"
    model = onnx.load(src)
    model.doc_string = "re-exported"
    onnx.save(model, other)
    code, out, err = invoke("verify", str(other), str(folded), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["exit_code"] == 1
    assert doc["verification"]["status"] == "passed" and doc["record"]["status"] == "mismatch"
    code, out, err = invoke("verify", str(other), str(folded))
    assert code == 1
    assert f"says it was folded from {sha256(src)[:12]}" in out + err
    assert "not folded from this file" in out + err
    # a candidate without a record: nothing to check, the outputs decide
    code, out, _ = invoke("verify", str(folded), str(src), "--json")
    assert code == 0 and json.loads(out)["record"]["status"] == "none"


# -- GitHub Actions -------------------------------------------------------------------------------


def test_escaping_follows_the_workflow_command_rules() -> None:
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a,b:c%\n") == "a%2Cb%3Ac%25%0A"
    assert escape_data("\x1b[31m") == "\\x1b[31m"


def test_github_annotations_and_step_summary(models: tuple[Path, Path], tmp_path: Path) -> None:
    src, folded = models
    odd = tmp_path / "a,b: 100%\n::warning::x.onnx"  # a newline must not start a new command
    odd.write_bytes(src.read_bytes())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    summary_dir = tmp_path / "runner files"
    summary_dir.mkdir()
    summary = summary_dir / "step summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, out, err = invoke(
        "check", str(src), str(folded), str(odd), str(broken), "--json", env=env
    )
    assert code == 3
    json.loads(out)  # stdout is still only the JSON document
    lines = [x for x in err.splitlines() if x.startswith("::")]
    assert len(lines) == 3, err
    assert lines[0] == (
        f"::error file={escape_property(str(src))},title=bnfold::"
        "1 foldable node remains (1 BatchNormalization)"
    )
    assert "a%2Cb%3A 100%25%0A%3A%3Awarning%3A%3Ax.onnx" in lines[1]
    assert lines[2].startswith(f"::error file={escape_property(str(broken))},title=bnfold::")
    assert "not a readable ONNX model" in lines[2]
    text = summary.read_text()
    assert text.startswith("earlier step\n### bnfold check: 3 of 4 model(s) failing")
    assert "| model | status | foldable left | reason |" in text
    assert f"| {src} | foldable | 1 | 1 foldable node remains (1 BatchNormalization) |" in text
    assert f"| {folded} | clean | 0 | folded by bnfold 0.1.0 from {sha256(src)[:12]}" in text
    assert "| error | - |" in text
    # --format text turns it off inside GitHub, --format github turns it on outside
    code, _, err = invoke("check", str(src), "--format", "text", env=env)
    assert code == 1 and "::error" not in err
    code, _, err = invoke("check", str(src), "--format", "github")
    assert code == 1 and "::error file=" in err
    code, _, err = invoke("check", str(src), "--format", "yaml")
    assert code == 2 and "--format" in err


def test_undecodable_file_names_do_not_break_the_reports(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    src, _ = models
    name = os.fsdecode(b"bad\xff name.onnx")  # a lone surrogate in Python's view
    try:
        (tmp_path / name).write_bytes(src.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    junit = tmp_path / "j.xml"
    code, _, _ = invoke("check", str(tmp_path / name), "--junit", str(junit), env=env)
    assert code == 1
    assert "bad\\udcff name.onnx" in summary.read_text()
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and (case.get("name") or "").endswith("bad\\udcff name.onnx")


def test_workspace_paths_are_relative_in_annotations(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    src, _ = models
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path)}
    _, _, err = invoke("check", str(src.resolve()), env=env)
    assert "::error file=net.onnx,title=bnfold::" in err


def test_fold_failure_annotated(
    models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import bnfold.numerics.arith as numerics

    src, _ = models
    real = numerics.folded_bias

    def broken(*args: np.ndarray) -> np.ndarray:
        bias: np.ndarray = real(*args).copy()
        bias[0] = -bias[0] + 1.0
        return bias

    monkeypatch.setattr(numerics, "folded_bias", broken)
    junit = tmp_path / "fold.xml"
    code, _, err = invoke(
        str(src), "-o", str(tmp_path / "x.onnx"), "--format", "github", "--junit", str(junit)
    )
    assert code == 1
    assert "::error file=" in err and "outputs differ from the original" in err
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None
    assert case.find("failure").get("type") == "verification_failed"  # type: ignore[union-attr]


# -- JUnit ----------------------------------------------------------------------------------------


def test_junit_one_testcase_per_model(models: tuple[Path, Path], tmp_path: Path) -> None:
    src, folded = models
    odd = tmp_path / "<odd & \x1b name>.onnx"
    odd.write_bytes(src.read_bytes())
    report = tmp_path / "reports dir" / "bnfold junit.xml"
    report.parent.mkdir()
    code, _, err = invoke("check", str(src), str(folded), str(odd), "--junit", str(report))
    assert code == 1, err
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "2"
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == [
        str(src),
        str(folded),
        str(tmp_path / "<odd & \\x1b name>.onnx"),
    ]
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("message") == "1 foldable node remains (1 BatchNormalization)"
    assert cases[1].find("failure") is None
    assert "folded by bnfold" in (cases[1].findtext("system-out") or "")
    assert sorted(os.listdir(report.parent)) == ["bnfold junit.xml"]  # no temporary file left
    assert oct(report.stat().st_mode & 0o777) == "0o644"


def test_junit_for_an_error_before_any_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    report = tmp_path / "j.xml"
    code, _, err = invoke("check", str(empty), "--junit", str(report), "--format", "github")
    assert code == 3
    assert "::error title=bnfold::" in err and "no .onnx models" in err
    case = ET.parse(report).getroot().find("testsuite/testcase")
    assert case is not None and "no .onnx models" in (case.find("failure").get("message") or "")  # type: ignore[union-attr]


def test_junit_into_a_missing_folder_is_a_usage_error(models: tuple[Path, Path]) -> None:
    src, _ = models
    code, out, err = invoke("check", str(src), "--junit", "/nonexistent/x.xml", "--json")
    assert code == 2 and "does not exist" in err
    assert json.loads(out)["error"]["type"] == "UsageError"
