"""Element types ONNX does not define (data_type 9999: a damaged file, or a type from a newer
ONNX) must never end in a traceback: a BN whose parameters or layer weight have such a type stays
with a reason code, the rest of the model folds, and verification says why it cannot feed an
input of such a type. Every command prints exactly one JSON document with --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold import fold_model
from bnfold.cli.app import app
from bnfold.model import proto
from bnfold.model.tensors import graph_tensors, node_tensors
from bnfold.numerics.dtypes import dtype_name
from tests import models_issue14, test_skip_reasons
from tests.builders import bn_initializers, bn_node, bn_stats, count_ops, make_model, tensor, vinfo

UNKNOWN = 9999
C = 8
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    # a bug in bnfold reaches the runner as an exception: that is the traceback a user would see
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def conv_bn(*, big: bool = False) -> onnx.ModelProto:
    """x -> Conv(w, b) -> Add(k) -> BN -> y, statistics that make a wrong fold visible; ``big``
    makes w large enough to stay in the file while folding (a header tensor)."""
    rng = np.random.default_rng(5)
    cin = 64 if big else 3
    w = rng.normal(0, 0.5, (C, cin, 3, 3) if big else (C, cin, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "k"], ["a"], name="add"),
        bn_node("a", "y", "bn"),
    ]
    inits = [
        tensor("w", w),
        tensor("b", rng.normal(0, 1, C).astype(np.float32)),
        tensor("k", rng.normal(0, 1, (C, 1, 1)).astype(np.float32)),
        *bn_initializers("bn", bn_stats(rng, C)),
    ]
    side = 6 if big else 4
    out = side - 2 if big else side
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, cin, side, side])],
        [vinfo("y", TensorProto.FLOAT, [1, C, out, out])],
        inits,
    )


def with_unknown(name: str, *, big: bool = False) -> onnx.ModelProto:
    model = conv_bn(big=big)
    (found,) = [t for t in model.graph.initializer if t.name == name]
    found.data_type = UNKNOWN
    return model


CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "bn_scale": lambda: with_unknown("bn_scale"),
    "bn_var": lambda: with_unknown("bn_var"),
    "weight": lambda: with_unknown("w"),
    "header_weight": lambda: with_unknown("w", big=True),
    "bias": lambda: with_unknown("b"),
    "added_constant": lambda: with_unknown("k"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unknown_type_in_what_the_fold_reads_is_a_reason(case: str) -> None:
    model = CASES[case]()
    before = model.SerializeToString()
    result = fold_model(model)
    (decision,) = result.report.decisions
    assert decision.reason == "unsupported_dtype", decision
    assert str(UNKNOWN) in decision.message, decision.message
    assert count_ops(result.model, "BatchNormalization") == 1
    assert result.model.SerializeToString() == before


@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
@pytest.mark.parametrize("case", ["bn_scale", "header_weight", "bias"])
def test_unknown_type_commands_give_one_json_document(
    tmp_path: Path, case: str, command: str
) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(CASES[case](), path)
    extra = ["-o", str(tmp_path / "out.onnx")] if command == "fold" else []
    code, out, err = invoke(command, str(path), "--json", *extra)
    assert code == 0, err  # nothing to fold: fold writes it unchanged, check finds it clean
    assert "Traceback" not in err
    doc = json.loads(out)
    (entry,) = doc["models"]
    assert doc["exit_code"] == 0 and entry["error"] is None
    (decision,) = entry["report"]["decisions"]
    assert decision["reason"] == "unsupported_dtype"
    assert f"unknown element type {UNKNOWN}" in decision["message"]
    if command == "fold":
        folded = onnx.load(tmp_path / "out.onnx", load_external_data=False)
        assert count_ops(folded, "BatchNormalization") == 1


def test_unknown_type_of_one_bn_leaves_the_others_folding() -> None:
    """A second Conv -> BN beside the broken one still folds (the model is not refused)."""
    good = conv_bn()
    model = with_unknown("bn_mean")
    for node in good.graph.node:
        node.name = "good_" + node.name
        node.input[:] = [n if n == "x" else "good_" + n for n in node.input]
        node.output[:] = ["good_" + n for n in node.output]
    for t in good.graph.initializer:
        t.name = "good_" + t.name
    model.graph.node.extend(good.graph.node)
    model.graph.initializer.extend(good.graph.initializer)
    model.graph.output.append(vinfo("good_y", TensorProto.FLOAT, [1, C, 4, 4]))
    report = fold_model(model).report
    assert report.folded == 1 and report.reasons() == {"unsupported_dtype": 1}


def test_unknown_type_inside_a_constant_subgraph_is_not_a_constant() -> None:
    """A BN parameter computed from a constant of unknown type cannot be evaluated."""
    model = conv_bn()
    model.graph.node.insert(0, helper.make_node("Identity", ["raw_scale"], ["bn_scale"]))
    (scale,) = [t for t in model.graph.initializer if t.name == "bn_scale"]
    scale.name, scale.data_type = "raw_scale", UNKNOWN
    (decision,) = fold_model(model).report.decisions
    assert decision.reason == "non_constant_param"
    assert f"'raw_scale' has unknown element type {UNKNOWN}" in decision.message


@pytest.mark.parametrize(
    ("command", "code"), [("fold", 4), ("inspect", 0), ("check", 1), ("verify", 3)]
)
def test_graph_input_of_unknown_type(tmp_path: Path, command: str, code: int) -> None:
    """Folding needs no input types; verification cannot feed the input: written unverified
    (exit 4) with why, not a usage error (exit 2) as if the command line were wrong."""
    model = conv_bn()
    model.graph.input[0].type.tensor_type.elem_type = UNKNOWN
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    args = {
        "fold": ["-o", str(tmp_path / "out.onnx")],
        "verify": [str(path)],
    }.get(command, [])
    got, out, err = invoke(command, str(path), "--json", *args)
    assert got == code, err
    assert "Traceback" not in err
    doc = json.loads(out)
    assert doc["exit_code"] == code
    if command == "verify":
        reason = doc["verification"]["reason"]
    else:
        (entry,) = doc["models"]
        assert entry["report"]["bn_folded"] == 1
        reason = (entry["verification"] or {}).get("reason")
    if command in ("fold", "verify"):
        assert f"input 'x' has element type {UNKNOWN}, which bnfold cannot feed" in reason
    if command == "fold":
        assert (tmp_path / "out.onnx").is_file()


def test_graph_output_of_unknown_type_folds(tmp_path: Path) -> None:
    model = conv_bn()
    model.graph.output[0].type.tensor_type.elem_type = UNKNOWN
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in ("inspect", "check"):
        code, out, err = invoke(command, str(path), "--json")
        assert json.loads(out)["models"][0]["report"]["bn_folded"] == 1
    code, out, err = invoke(str(path), "-o", str(tmp_path / "out.onnx"), "--json")
    assert code in (0, 4), err  # whether a backend runs such a model is the backend's business
    assert json.loads(out)["models"][0]["report"]["bn_folded"] == 1


def test_unknown_tensor_outside_the_folds_is_named_by_verification(tmp_path: Path) -> None:
    """An unused initializer of unknown type: the BN folds; no backend can load the model, and
    the reason names the tensor (onnx.reference said only '9999')."""
    model = conv_bn()
    extra = tensor("unused", np.zeros(3, np.float32))
    extra.data_type = UNKNOWN
    model.graph.initializer.append(extra)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code, out, err = invoke(str(path), "-o", str(tmp_path / "out.onnx"), "--json")
    assert code == 4, err
    reason = json.loads(out)["models"][0]["verification"]["reason"]
    assert f"onnx.reference: tensor 'unused' has unknown element type {UNKNOWN}" in reason


def test_names_and_arrays_of_unknown_types() -> None:
    assert dtype_name(UNKNOWN) == f"unknown element type {UNKNOWN}"
    assert dtype_name(TensorProto.INT64) == "int64"
    t = tensor("t", np.zeros(2, np.float32))
    t.data_type = UNKNOWN
    with pytest.raises(proto.UnknownElementType, match="'t' has unknown element type 9999"):
        proto.to_array(t)


def _test_models() -> list[onnx.ModelProto]:
    models = [build() for build, _ in test_skip_reasons.CASES.values()]
    for build in models_issue14.MODELS.values():
        built = build()
        models.append(built[0] if isinstance(built, tuple) else built)
    return [*models, conv_bn(), conv_bn(big=True)]


def _tensors(model: onnx.ModelProto) -> list[TensorProto]:
    found = list(graph_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            found.extend(node_tensors(node))
    return found


def test_no_tensor_of_unknown_type_makes_the_fold_crash() -> None:
    """Every tensor of every test model, one at a time, made of unknown type."""
    runs = 0
    for base in _test_models():
        for i in range(len(_tensors(base))):
            model = onnx.ModelProto()
            model.CopyFrom(base)
            _tensors(model)[i].data_type = UNKNOWN
            fold_model(model, inplace=True)
            runs += 1
    assert runs > 50
