"""The streaming writer and the lazy reader: same bytes as protobuf, weights read only when folded,
external data laid out and copied correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from bnfold import fold_file, fold_model
from bnfold.model import record as fold_record
from bnfold.model.graph import ModelIndex
from bnfold.model.reading import open_model_file, uses_external_data
from bnfold.model.wire import MIN_LAZY_BYTES
from bnfold.model.writer import ALIGNMENT, write_model
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.ortutil import assert_fold_matches


def _rich_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> BN with large weights, plus every kind of field the writer must lay out: doc
    strings, metadata, value_info, a float_data tensor, a string tensor, an If with its own
    initializer and a Constant node, and a local function."""
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)  # 18 KiB: read lazily
    float_data = helper.make_tensor("fd", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    strings = helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"bc"])  # type: ignore[list-item]
    then_init = tensor("then_c", rng.standard_normal(600).astype(np.float32))
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=tensor("kv", np.ones(400, np.float32)))],
        "then",
        [],
        [vinfo("then_c", TensorProto.FLOAT, [600])],
        [then_init],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["fd"], ["else_out"])],
        "else",
        [],
        [vinfo("else_out", TensorProto.FLOAT, [3])],
    )
    func = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
        helper.make_node(
            "If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("Twice", ["y"], ["z"], domain="local"),
    ]
    model = make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 16, 8, 8]), vinfo("cond", TensorProto.BOOL, [])],
        [vinfo("z", TensorProto.FLOAT, [1, 32, 8, 8]), vinfo("branch", TensorProto.FLOAT, None)],
        [tensor("w", w), float_data, strings, *bn_initializers("bn", bn_params(rng, 32))],
        value_info=[vinfo("c", TensorProto.FLOAT, [1, 32, 8, 8])],
        functions=[func],
        extra_opsets=[("local", 1)],
    )
    model.doc_string = "a model with everything"
    model.producer_name = "tests"
    helper.set_model_props(model, {"author": "bnfold", "license": "MIT"})
    model.graph.initializer[0].doc_string = "the conv weight"
    return model


def test_write_gives_protobufs_own_bytes(tmp_path: Path) -> None:
    model = _rich_model(np.random.default_rng(0))
    write_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()


def test_open_leaves_large_weights_in_the_file_and_writes_them_back(tmp_path: Path) -> None:
    model = _rich_model(np.random.default_rng(1))
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    opened = open_model_file(src)
    lazy, store = opened.model, opened.store
    assert set(store.names()) == {"w"}  # the 128-byte BN statistics and the odd tensors stay parsed
    assert not opened.external and not uses_external_data(lazy)  # bytes left inline: not external
    w = next(t for t in lazy.graph.initializer if t.name == "w")
    assert not w.raw_data and w.doc_string == "the conv weight"
    assert not w.external_data and w.data_location == TensorProto.DEFAULT  # no marker anywhere
    # the value is read from the file on demand, exactly
    array = ModelIndex(lazy, tmp_path, store).main.constant("w").array()
    np.testing.assert_array_equal(array, onnx.numpy_helper.to_array(model.graph.initializer[0]))
    write_model(lazy, tmp_path / "out.onnx", source_dir=tmp_path, store=store)
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_fold_file_writes_what_folding_the_loaded_model_gives(tmp_path: Path) -> None:
    model = _rich_model(np.random.default_rng(2))
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    before = src.read_bytes()
    result = fold_file(src, tmp_path / "f.onnx", verify=None, record=False)
    assert result.report.folded == 1 and result.record is None
    expected = fold_model(model).model
    assert (tmp_path / "f.onnx").read_bytes() == expected.SerializeToString()
    assert src.read_bytes() == before
    # with the record (after the graph, before the model's local functions): the same model
    # with one more metadata entry, as protobuf itself would write it
    recorded = fold_file(src, tmp_path / "r.onnx", verify=None)
    assert recorded.record is not None
    fold_record.put(expected, fold_record.encode(recorded.record))
    assert [p.key for p in expected.metadata_props][-1] == "bnfold" and expected.functions
    assert (tmp_path / "r.onnx").read_bytes() == expected.SerializeToString()


def test_external_layout_aligns_large_tensors_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    big = rng.standard_normal(300_000).astype(np.float32)  # 1.2 MB: aligned
    small = rng.standard_normal(300).astype(np.float32)  # 1.2 KB: external, unaligned
    tiny = np.arange(4, dtype=np.int64)  # 32 B: stays inline
    model = make_model(
        [helper.make_node("Identity", ["a"], ["y"])],
        [],
        [vinfo("y", TensorProto.FLOAT, [300])],
        [tensor("a", small), tensor("big", big), tensor("tiny", tiny)],
    )
    assert write_model(model, tmp_path / "m.onnx", external=True, data_name="m.data")
    loaded = onnx.load(tmp_path / "m.onnx")
    values = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(values["big"], big)
    np.testing.assert_array_equal(values["a"], small)
    np.testing.assert_array_equal(values["tiny"], tiny)
    header = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    offsets = {
        t.name: int({e.key: e.value for e in t.external_data}["offset"])
        for t in header.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    assert set(offsets) == {"a", "big"}
    assert offsets["big"] % ALIGNMENT == 0 and offsets["big"] > 0
    assert model.graph.initializer[1].raw_data  # the model passed in is not changed


def test_over_the_limit_goes_external(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Identity", ["a"], ["y"])],
        [],
        [vinfo("y", TensorProto.FLOAT, [5000])],
        [tensor("a", np.ones(5000, np.float32))],
    )
    assert not write_model(model, tmp_path / "small.onnx", external=None, limit=10**6)
    assert write_model(model, tmp_path / "big.onnx", external=None, limit=10_000)
    assert (tmp_path / "big.onnx.data").stat().st_size == 20_000
    out = onnx.load(tmp_path / "big.onnx")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(out.graph.initializer[0]), 1.0)


def test_raw_data_that_does_not_fit_its_shape_is_refused(tmp_path: Path) -> None:
    bad = tensor("a", np.ones(2000, np.float32))
    bad.dims[:] = [2001]  # 8000 bytes of data for 8004 needed: a broken file
    model = make_model(
        [helper.make_node("Identity", ["a"], ["y"])],
        [],
        [vinfo("y", TensorProto.FLOAT, None)],
        [bad],
    )
    with pytest.raises(ValueError, match="8000 bytes of raw data"):
        write_model(model, tmp_path / "m.onnx")


def test_lazy_threshold_keeps_small_tensors_parsed(tmp_path: Path) -> None:
    n = MIN_LAZY_BYTES // 4
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [],
        [vinfo("y", TensorProto.FLOAT, [n])],
        [tensor("a", np.ones(n, np.float32)), tensor("b", np.ones(n - 1, np.float32))],
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    opened = open_model_file(path)
    assert not opened.external
    assert [t.name in opened.store for t in opened.model.graph.initializer] == [True, False]


@pytest.mark.parametrize("external", [False, True])
def test_in_place_fold_reads_the_weights_it_is_replacing(tmp_path: Path, external: bool) -> None:
    """--in-place with weights left in the file (inline or external data): the folded file is
    staged from the original's bytes before the original is replaced."""
    model = _rich_model(np.random.default_rng(4))
    expected = fold_model(model).model  # (saving with external data changes ``model``)
    src = tmp_path / "m.onnx"
    if external:
        onnx.save_model(model, src, save_as_external_data=True, location="m.onnx.data")
    else:
        src.write_bytes(model.SerializeToString())
    result = fold_file(src, in_place=True)
    assert result.status == "folded" and result.verification is not None
    assert result.verification.passed
    out = onnx.load(src)  # external data loaded from beside it
    assert out.graph.node[0].op_type == "Conv" and len(out.graph.node) == len(expected.graph.node)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    for t in expected.graph.initializer:
        np.testing.assert_array_equal(got[t.name], onnx.numpy_helper.to_array(t))
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == ({"m.onnx", "m.onnx.data"} if external else {"m.onnx"})


@settings(max_examples=25, deadline=None)
@given(
    cin_g=st.integers(1, 3),
    cout_g=st.integers(1, 3),
    groups=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_bn_into_the_conv_after_it(
    cin_g: int, cout_g: int, groups: int, k: int, stride: int, dilation: int, bias: bool, seed: int
) -> None:
    """BN -> unpadded Conv of any group, kernel, stride and dilation folds forward exactly."""
    rng = np.random.default_rng(seed)
    cin, cout = cin_g * groups, cout_g * groups
    w = rng.normal(0, 0.5, (cout, cin_g, k, k)).astype(np.float32)
    inputs = ["n", "w", "b"] if bias else ["n", "w"]
    conv = helper.make_node(
        "Conv", inputs, ["y"], group=groups, strides=[stride] * 2, dilations=[dilation] * 2
    )
    inits = [tensor("w", w), *bn_initializers("bn", bn_params(rng, cin))]
    if bias:
        inits.append(tensor("b", rng.normal(0, 1, cout).astype(np.float32)))
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "n", "bn"), conv],
        [vinfo("x", TensorProto.FLOAT, [1, cin, 7, 7])],
        [vinfo("y", TensorProto.FLOAT, None)],
        inits,
    )
    assert_fold_matches(model, expect_folded=1, seed=seed)


def test_fields_newer_than_this_onnx_are_kept(tmp_path: Path) -> None:
    """Unknown fields (a newer ONNX) on the model and on the graph survive a fold unchanged."""
    model = _rich_model(np.random.default_rng(6))
    graph = model.graph.SerializeToString() + bytes([0xF8, 0x07, 0x2A])  # graph field 127 = 42
    model.ClearField("graph")
    model.graph.ParseFromString(graph)
    raw = model.SerializeToString() + bytes([0xA2, 0x06, 0x02]) + b"ab"  # model field 100 = "ab"
    src = tmp_path / "m.onnx"
    src.write_bytes(raw)
    opened = open_model_file(src)
    write_model(opened.model, tmp_path / "copy.onnx", source_dir=tmp_path, store=opened.store)
    assert (tmp_path / "copy.onnx").read_bytes() == onnx.load(src).SerializeToString()
    result = fold_file(src, tmp_path / "f.onnx")
    assert result.report.folded == 1 and result.status == "folded"
    out = (tmp_path / "f.onnx").read_bytes()
    assert out.endswith(bytes([0xA2, 0x06, 0x02]) + b"ab")
    assert bytes([0xF8, 0x07, 0x2A]) in out


def test_unknown_fields_of_a_large_tensor_are_kept(tmp_path: Path) -> None:
    model = _rich_model(np.random.default_rng(7))
    w = model.graph.initializer[0]  # the 18 KiB conv weight, read lazily
    w.ParseFromString(w.SerializeToString() + bytes([0xF8, 0x07, 0x07]))  # tensor field 127 = 7
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    opened = open_model_file(src)
    write_model(opened.model, tmp_path / "copy.onnx", source_dir=tmp_path, store=opened.store)
    assert (tmp_path / "copy.onnx").read_bytes() == model.SerializeToString()


def test_unknown_group_fields_are_written_back(tmp_path: Path) -> None:
    """A (proto2) group that this onnx does not know is kept, nested groups included, byte for
    byte as protobuf writes it; the reader accepts such files, so the writer must too."""
    from bnfold.model.wire import encode_varint

    def group(number: int, body: bytes) -> bytes:
        return encode_varint(number << 3 | 3) + body + encode_varint(number << 3 | 4)

    inner = group(7, encode_varint(1 << 3) + encode_varint(5))
    base = onnx.ModelProto()
    base.ir_version = 8
    base.graph.name = "g"
    data = base.SerializeToString() + group(99, inner + encode_varint(2 << 3 | 5) + b"abcd")
    model = onnx.ModelProto.FromString(data)
    out = tmp_path / "m.onnx"
    write_model(model, out)
    assert out.read_bytes() == model.SerializeToString() == data
