"""The GitHub Action (action.yml) run as a workflow runs it: its shell steps (action/steps.sh)
with the environment the action maps its inputs onto, a simulated GITHUB_OUTPUT and
GITHUB_STEP_SUMMARY in a folder with a space, and models whose paths have spaces."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import onnx
import pytest

from bnfold.cli.schema import SCHEMA
from tests.test_record import conv_bn

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "action" / "steps.sh"
BNFOLD = shutil.which("bnfold", path=str(Path(sys.executable).parent)) or "bnfold"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A checkout with an unfolded model and a folded one, both with spaces in their paths."""
    ws = tmp_path / "work space"
    (ws / "my models").mkdir(parents=True)
    onnx.save(conv_bn(), ws / "my models" / "net one.onnx")
    run = subprocess.run(
        [BNFOLD, "my models/net one.onnx", "-o", "my models/clean one.onnx", "-q"], cwd=ws
    )
    assert run.returncode == 0
    (ws / "runner files").mkdir()
    return ws


def step(
    ws: Path, name: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """Run one step of the action; its outputs (GITHUB_OUTPUT) and the job summary."""
    runner = ws / "runner files"
    outputs, summary = runner / "github output", runner / "step summary.md"
    outputs.write_text("")
    summary.write_text("")
    full = {
        k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "BNFOLD_", "RUNNER_"))
    }
    full.update(
        GITHUB_ACTIONS="true",
        GITHUB_OUTPUT=str(outputs),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_WORKSPACE=str(ws),
        GITHUB_ACTION_PATH=str(ROOT),
        RUNNER_TEMP=str(runner),
        RUNNER_OS="Linux",
        BNFOLD_BIN=BNFOLD,
        **env,
    )
    run = subprocess.run(
        ["bash", str(STEPS), name], cwd=ws, env=full, capture_output=True, text=True
    )
    pairs = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    return run, pairs, summary.read_text()


MODELS = "my models/net one.onnx\r\n\n   my models/clean one.onnx  \n"


def test_check_step_fails_annotates_and_reports(workspace: Path) -> None:
    run, outputs, summary = step(workspace, "run", BNFOLD_MODELS=MODELS)
    assert run.returncode == 1, run.stderr
    assert outputs["exit-code"] == "1"
    report = Path(outputs["report"])
    assert report == workspace / "bnfold-check.json"
    doc = json.loads(report.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert [m["status"] for m in doc["models"]] == ["foldable", "clean"]
    assert [m["input"] for m in doc["models"]] == [
        "my models/net one.onnx",
        "my models/clean one.onnx",
    ]
    assert run.stdout == ""  # the JSON went to the report, nothing else to stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error file=my models/net one.onnx,title=bnfold::"
        "1 foldable node remains (1 BatchNormalization)"
    ]
    assert "### bnfold check: 1 of 2 model(s) failing" in summary
    assert "| my models/clean one.onnx | clean | 0 | folded by bnfold" in summary


def test_exit_code_usable_without_continue_on_error(workspace: Path) -> None:
    run, outputs, _ = step(
        workspace, "run", BNFOLD_MODELS=MODELS, BNFOLD_FAIL="false", BNFOLD_REPORT="out/r.json"
    )
    assert run.returncode == 0 and outputs["exit-code"] == "1"
    assert outputs["report"] == str(workspace / "out" / "r.json")  # its folder was made
    assert json.loads((workspace / "out" / "r.json").read_text())["exit_code"] == 1


def test_clean_models_pass_and_junit(workspace: Path) -> None:
    run, outputs, _ = step(
        workspace,
        "run",
        BNFOLD_MODELS="my models/clean one.onnx",
        BNFOLD_JUNIT="runner files/junit report.xml",
    )
    assert run.returncode == 0, run.stderr
    assert outputs["exit-code"] == "0"
    assert "<testcase" in (workspace / "runner files" / "junit report.xml").read_text()


def test_fold_mode_with_args(workspace: Path) -> None:
    run, outputs, summary = step(
        workspace,
        "run",
        BNFOLD_MODELS="my models/net one.onnx",
        BNFOLD_MODE="fold",
        BNFOLD_ARGS='-o "folded models/" --input-shape x:1x3x8x8',
    )
    assert run.returncode == 0, run.stderr
    assert (workspace / "folded models" / "net one.onnx").is_file()
    doc = json.loads(Path(outputs["report"]).read_text())
    assert outputs["report"].endswith("bnfold-fold.json") and doc["command"] == "fold"
    assert doc["models"][0]["record"]["verification"]["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert "### bnfold fold: 0 of 1 model(s) failing" in summary


@pytest.mark.parametrize(
    ("env", "message"),
    [({"BNFOLD_MODELS": " \n"}, "names no model"), ({"BNFOLD_MODE": "lint"}, "mode must be")],
)
def test_bad_inputs(workspace: Path, env: dict[str, str], message: str) -> None:
    run, _, _ = step(workspace, "run", **{"BNFOLD_MODELS": MODELS, **env})
    assert run.returncode == 2 and message in run.stdout and "::error" in run.stdout


def test_prepare_gives_a_pip_cache_and_a_key(workspace: Path) -> None:
    run, outputs, _ = step(workspace, "prepare", BNFOLD_REQUIREMENT="bnfold>=0.1,<0.2")
    assert run.returncode == 0, run.stderr
    assert outputs["pip-cache"]
    assert re.fullmatch(r"bnfold-pip-Linux-py3\.\d+-[0-9a-f]{16}", outputs["cache-key"])
    _, other, _ = step(workspace, "prepare", BNFOLD_REQUIREMENT="bnfold==0.2")
    assert other["cache-key"] != outputs["cache-key"]


def test_action_yml_runs_these_steps() -> None:
    """action.yml maps its inputs onto the variables the steps read, and runs them."""
    text = (ROOT / "action.yml").read_text()
    for name in ("prepare", "install", "run"):
        assert f'run: bash "$GITHUB_ACTION_PATH/action/steps.sh" {name}' in text
    script = STEPS.read_text()
    for variable in re.findall(r"(BNFOLD_[A-Z_]+): \$\{\{", text):
        assert variable in script, variable
    for name in ("models", "mode", "args", "report", "junit", "fail", "python-version", "cache"):
        assert f"inputs.{name}" in text, name
    assert "if: inputs.python-version != ''" in text  # setup-python only when asked
    yaml = pytest.importorskip("yaml")
    action = yaml.safe_load(text)
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@") and "if" in steps[0]
    assert any(s.get("uses", "").startswith("actions/cache@") for s in steps)
    assert set(action["outputs"]) == {"exit-code", "report"}
