"""The fold record (issue 21): what every written model says about where it came from, that it is
reproducible to the byte, that it never costs a second write of the weights, and that bnfold's
own output folds to itself."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bnfold
from bnfold.model import record as fold_record
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import random_feeds, run_ort


def conv_bn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN (folds) -> Relu -> BN (kept: follows a Relu), negative gammas, var in [0.1, 4]."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "b1", "bn1"),
        helper.make_node("Relu", ["b1"], ["r"], name="relu"),
        bn_node("r", "y", "bn2"),
    ]
    inits = [tensor("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32))]
    for prefix in ("bn1", "bn2"):
        params = bn_params(rng, 4)
        params["scale"] = -np.abs(params["scale"]) - 0.1
        params["var"] = rng.uniform(0.1, 4, 4).astype(np.float32)
        inits += bn_initializers(prefix, params)
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [vinfo("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "exporter"
    return model


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "net.onnx"
    path.parent.mkdir()
    onnx.save(conv_bn(), path)
    return path


def metadata(path: Path) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in onnx.load(path, load_external_data=False).metadata_props]


def stored(path: Path) -> dict[str, Any]:
    found = [v for k, v in metadata(path) if k == "bnfold"]
    assert len(found) == 1, metadata(path)
    value: dict[str, Any] = json.loads(found[0])
    return value


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_record_says_source_options_folds_and_verification(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "net.folded.onnx"
    out.parent.mkdir()
    result = bnfold.fold_file(source, out, verify=bnfold.VerifyOptions(samples=2, seed=7))
    assert result.status == "folded"
    record = stored(out)
    assert record == result.record
    assert record["tool"] == "bnfold" and record["version"] == bnfold.__version__
    assert record["record"] == 1
    assert record["source"] == {
        "sha256": sha256(source),
        "bytes": source.stat().st_size,
        "external_data": [],
    }
    assert record["folded"] == {"BatchNormalization": 1}
    assert record["kept"] == {"unsupported_producer": 1}
    assert record["nodes"] == {"before": 4, "after": 3}
    assert record["options"]["rules"] == "default" and record["options"]["force"] is False
    assert record["options"]["verify"]["samples"] == 2 and record["options"]["verify"]["seed"] == 7
    v = record["verification"]
    assert v["status"] == "passed" and v["backend"] == "onnxruntime"
    assert v["providers"] == ["CPUExecutionProvider"] and v["backend_version"]
    assert v["samples"] == 2 and v["seed"] == 7 and v["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert v["worst"]["output"] == "y" and 0 <= v["worst"]["max_abs"] < 1e-4
    assert (v["worst"]["rtol"], v["worst"]["atol"]) == (1e-4, 1e-5)
    # no paths and no times: nothing of where or when it ran
    text = dict(metadata(out))["bnfold"]
    assert str(tmp_path) not in text and "/" not in text and "src" not in text
    # the other metadata stays, before the record; the folded model computes the same outputs
    assert [k for k, _ in metadata(out)] == ["author", "bnfold"]
    feeds = random_feeds(onnx.load(source))
    for a, b in zip(run_ort(onnx.load(source), feeds), run_ort(onnx.load(out), feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_same_input_and_options_give_the_same_bytes_wherever_they_run(
    source: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "other place" / "renamed.onnx"
    elsewhere.parent.mkdir()
    shutil.copy(source, elsewhere)
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", elsewhere.with_name("c.onnx")
    bnfold.fold_file(source, a)
    bnfold.fold_file(source, b)
    bnfold.fold_file(elsewhere, c)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    # what protobuf itself writes for this model: the record was put where it belongs
    assert a.read_bytes() == onnx.load(a).SerializeToString()
    # other options, another record
    d = tmp_path / "d.onnx"
    bnfold.fold_file(source, d, verify=bnfold.VerifyOptions(seed=1))
    assert stored(d)["options"]["verify"]["seed"] == 1 and d.read_bytes() != a.read_bytes()


def test_verification_outcome_is_written_without_writing_the_weights_again(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.model.staging as staging

    writes: list[str] = []
    real = staging.write_model

    def counted(model: Any, path: Any, **kwargs: Any) -> bool:
        writes.append(str(path))
        return real(model, path, **kwargs)

    monkeypatch.setattr(staging, "write_model", counted)
    out = tmp_path / "o.onnx"
    bnfold.fold_file(source, out)
    assert len(writes) == 1  # the model was written once; the record went into its tail
    assert stored(out)["verification"]["status"] == "passed"


def test_rewrite_touches_only_the_tail(tmp_path: Path) -> None:
    model = conv_bn()
    helper_fn = helper.make_function(
        "local",
        "f",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", 13)],
    )
    model.functions.append(helper_fn)
    model.opset_import.append(helper.make_opsetid("local", 1))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    head = path.read_bytes()[:200]
    fold_record.rewrite(path, '{"record":1,"tool":"bnfold"}')
    expected = onnx.load(path)
    assert path.read_bytes()[:200] == head
    assert path.read_bytes() == expected.SerializeToString()
    assert [p.key for p in expected.metadata_props] == ["author", "bnfold"]
    assert expected.functions[0].name == "f"
    fold_record.rewrite(path, None)
    assert path.read_bytes() == model.SerializeToString()


def test_folding_bnfold_output_changes_nothing(source: Path, tmp_path: Path) -> None:
    once = tmp_path / "once.onnx"
    bnfold.fold_file(source, once)
    twice = tmp_path / "twice.onnx"
    result = bnfold.fold_file(once, twice)
    assert result.status == "unchanged"
    assert twice.read_bytes() == once.read_bytes()  # the record it had is kept as it was
    assert result.record == stored(once)
    # in place: not even touched
    mtime = once.stat().st_mtime_ns
    assert bnfold.fold_file(once, in_place=True).status == "unchanged"
    assert once.stat().st_mtime_ns == mtime


def test_a_model_with_nothing_to_fold_gets_a_record_once(tmp_path: Path) -> None:
    model = conv_bn()
    del model.graph.node[1]  # Conv -> Relu -> BN: nothing folds
    model.graph.node[1].input[0] = "c"
    src = tmp_path / "plain.onnx"
    onnx.save(model, src)
    first = tmp_path / "first.onnx"
    bnfold.fold_file(src, first)
    assert stored(first)["verification"] == {"status": "not_run", "why": "nothing_folded"}
    assert stored(first)["folded"] == {} and stored(first)["source"]["sha256"] == sha256(src)
    second = tmp_path / "second.onnx"
    bnfold.fold_file(first, second)
    assert second.read_bytes() == first.read_bytes()


def test_an_old_record_is_replaced_and_named_as_previous(source: Path, tmp_path: Path) -> None:
    model = onnx.load(source)
    old = {"record": 1, "tool": "bnfold", "version": "0.0.9", "source": {"sha256": "ab" * 32}}
    entry = model.metadata_props.add()
    entry.key, entry.value = "bnfold", json.dumps(old)
    entry = model.metadata_props.add()
    entry.key, entry.value = "license", "mit"
    src = tmp_path / "old.onnx"
    onnx.save(model, src)
    out = tmp_path / "new.onnx"
    bnfold.fold_file(src, out, verify=None)
    assert [k for k, _ in metadata(out)] == ["author", "bnfold", "license"]  # in its place
    record = stored(out)
    assert record["source"]["sha256"] == sha256(src) and record["version"] == bnfold.__version__
    assert record["previous"] == {"version": "0.0.9", "source": "ab" * 32}
    assert record["verification"] == {"status": "not_run", "why": "no_verify"}
    assert record["options"]["verify"] is None
    # without a record: the stale one goes (it described the model before this fold)
    bare = tmp_path / "bare.onnx"
    bnfold.fold_file(src, bare, verify=None, record=False)
    assert [k for k, _ in metadata(bare)] == ["author", "license"]


def test_no_record(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    result = bnfold.fold_file(source, out, record=False)
    assert result.record is None and [k for k, _ in metadata(out)] == ["author"]
    again = tmp_path / "again.onnx"
    bnfold.fold_file(source, again, record=False)
    assert again.read_bytes() == out.read_bytes()


def test_forced_failed_verification_is_recorded(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.numerics.arith as numerics

    real = numerics.folded_bias

    def broken(*args: np.ndarray) -> np.ndarray:
        bias: np.ndarray = real(*args).copy()
        bias[0] = -bias[0] + 1.0
        return bias

    monkeypatch.setattr(numerics, "folded_bias", broken)
    out = tmp_path / "o.onnx"
    result = bnfold.fold_file(source, out, force=True)
    assert result.status == "verification_failed"
    record = stored(out)
    assert record["verification"]["status"] == "failed" and record["options"]["force"] is True
    assert record["verification"]["worst"]["max_abs"] > 0.5


def test_external_data_is_hashed(tmp_path: Path) -> None:
    src = tmp_path / "ext.onnx"
    onnx.save(
        conv_bn(),
        src,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    out = tmp_path / "out.onnx"
    bnfold.fold_file(src, out)
    record = stored(out)
    data = tmp_path / "ext.onnx.data"
    assert record["source"]["external_data"] == [
        {"sha256": sha256(data), "bytes": data.stat().st_size}
    ]
    assert record["source"]["sha256"] == sha256(src)
    assert (tmp_path / "out.onnx.data").is_file()


def test_external_data_whose_every_weight_folds_is_still_hashed(tmp_path: Path) -> None:
    """Only the Conv's weight is external and the fold replaces it: no tensor of the folded model
    names the data file any more, but the record still holds the source's data file."""
    src = tmp_path / "big.onnx"
    rng = np.random.default_rng(8)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y", "bn")],
        [vinfo("x", TensorProto.FLOAT, [1, 64, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, 64, 4, 4])],
        [
            tensor("w", rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32)),
            *bn_initializers("bn", bn_params(rng, 64)),
        ],
    )
    onnx.save(
        model,
        src,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.onnx.data",
        size_threshold=1024,
    )
    out = tmp_path / "out.onnx"
    bnfold.fold_file(src, out)
    data = tmp_path / "big.onnx.data"
    assert stored(out)["source"]["external_data"] == [
        {"sha256": sha256(data), "bytes": data.stat().st_size}
    ]


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "[" * 100_000,
        "[" * 5_000,  # under the size limit, past the JSON decoder's recursion limit
        '{"record": 1, "tool": "bnfold", "source": NaN}',
        '{"record": 1, "tool": "other"}',
        json.dumps({"record": 1, "tool": "bnfold", "x": "y" * 70_000}),
        json.dumps({"record": 1, "tool": "bnfold", "deep": [[[[[[[[[[1]]]]]]]]]]}),
    ],
)
def test_a_hostile_record_is_not_a_record(tmp_path: Path, value: str) -> None:
    model = conv_bn()
    entry = model.metadata_props.add()
    entry.key, entry.value = "bnfold", value
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    assert bnfold.fold_file(src, write=False).record is None
    out = tmp_path / "o.onnx"
    result = bnfold.fold_file(src, out, verify=None)
    assert result.record is not None and stored(out)["source"]["sha256"] == sha256(src)
