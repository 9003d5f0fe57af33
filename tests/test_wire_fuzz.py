"""The hand-written protobuf reader (bnfold.model.wire) against the protobuf library itself.

Valid models of every shape hypothesis can make must read the same through ``wire.open_model``
as through ``onnx.load`` (lazy tensors pointing exactly at the bytes protobuf sees); corrupt bytes
must give ``InputError`` (exit 3) and nothing else, quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputError
from bnfold.model import wire
from bnfold.model.reading import OpenedModel, open_model_file, read_model
from tests.builders import make_model, vinfo

#: BNFOLD_FUZZ_EXAMPLES=20000 for a long local run; CI keeps to a few seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("BNFOLD_FUZZ_EXAMPLES", "150")),
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.uint8, np.int8]


def _unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field that no ONNX message defines (kept by protobuf as unknown)."""
    return wire.encode_varint(number << 3 | 2) + wire.encode_varint(len(payload)) + payload


def _unknown_group(number: int, inner: bytes = b"") -> bytes:
    """A (proto2, deprecated) group field no ONNX message defines: protobuf keeps it too."""
    return wire.encode_varint(number << 3 | 3) + inner + wire.encode_varint(number << 3 | 4)


#: Unknown fields of every wire type: varint, fixed64, length-delimited, group (nested), fixed32.
UNKNOWN = [
    wire.encode_varint(95 << 3 | 0) + wire.encode_varint(1 << 63),
    wire.encode_varint(94 << 3 | 1) + b"\x01" * 8,
    _unknown_field(93, b"bytes"),
    _unknown_group(92, b"\x08\x01" + _unknown_group(91, _unknown_field(1, b"x")) + b"\x15abcd"),
    wire.encode_varint(90 << 3 | 5) + b"\x02" * 4,
]


@st.composite
def tensors(draw: st.DrawFn, name: str) -> TensorProto:
    dtype = draw(st.sampled_from(DTYPES))
    itemsize = np.dtype(dtype).itemsize
    # sizes on both sides of MIN_LAZY_BYTES, and right at it
    threshold = wire.MIN_LAZY_BYTES // itemsize
    count = draw(
        st.one_of(
            st.integers(0, 8),
            st.integers(threshold - 2, threshold + 2),
            st.integers(threshold, 3 * threshold),
        )
    )
    values = np.arange(count, dtype=np.int64) % 97
    array = values.astype(dtype)
    if draw(st.booleans()):
        tensor = numpy_helper.from_array(array, name)  # raw_data
    else:  # typed fields (float_data, int32_data, ...)
        tensor = helper.make_tensor(
            name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [count], array.tolist()
        )
    if draw(st.booleans()):
        tensor.doc_string = draw(st.text(max_size=20))
    if draw(st.booleans()):
        entry = tensor.metadata_props.add()
        entry.key, entry.value = "k", draw(st.text(max_size=10))
    return tensor


@st.composite
def models(draw: st.DrawFn) -> bytes:
    """Serialized valid models: a chain of Identity/Add nodes over random initializers, maybe an
    If with initializers of its own, doc strings, metadata and unknown fields at every level."""
    n = draw(st.integers(1, 4))
    inits = [draw(tensors(f"t{i}")) for i in range(n)]
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"y{i}"], name=f"id{i}") for i in range(n)]
    outputs = [vinfo(f"y{i}", inits[i].data_type, None) for i in range(n)]
    if draw(st.booleans()):
        branch_init = draw(tensors("b0"))
        then = helper.make_graph(
            [helper.make_node("Identity", ["b0"], ["bo"])],
            "then",
            [],
            [vinfo("bo", branch_init.data_type, None)],
            [branch_init],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["b0"], ["eo"])],
            "else",
            [],
            [vinfo("eo", branch_init.data_type, None)],
            [branch_init],
        )
        nodes.append(helper.make_node("If", ["cond"], ["iy"], then_branch=then, else_branch=other))
        inits.append(numpy_helper.from_array(np.array(True), "cond"))
        outputs.append(vinfo("iy", branch_init.data_type, None))
    model = make_model(nodes, [], outputs, inits)
    if draw(st.booleans()):
        model.doc_string = draw(st.text(max_size=30))
        model.graph.doc_string = draw(st.text(max_size=30))
    if draw(st.booleans()):
        helper.set_model_props(model, {"author": draw(st.text(max_size=10))})
    unknown = st.lists(st.sampled_from(UNKNOWN), max_size=3).map(b"".join)
    if draw(st.booleans()):  # unknown fields inside initializers and the graph
        for t in model.graph.initializer:
            t.MergeFromString(_unknown_field(99, b"tensor-extra") + draw(unknown))
        model.graph.MergeFromString(_unknown_field(98, b"graph-extra") + draw(unknown))
    data = model.SerializeToString()
    if draw(st.booleans()):  # unknown model fields, before and after the graph
        data = _unknown_field(97, b"front") + draw(unknown) + data + draw(unknown)
    return data


def _resolve(
    model: onnx.ModelProto, slices: list[tuple[str, int, int]], data: bytes
) -> list[tuple[str, int, int]]:
    """Put the bytes of each lazily read tensor back inline; (name, offset, length) of each."""
    found = []
    where = {name: (offset, length) for name, offset, length in slices}
    for t in model.graph.initializer:
        if t.name not in where:
            continue
        offset, length = where[t.name]
        assert not t.HasField("raw_data") and t.data_location == 0  # a header, no marker
        found.append((t.name, offset, length))
        t.raw_data = data[offset : offset + length]
    return found


@FUZZ
@given(data=models())
def test_valid_models_read_the_same_as_protobuf(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    ref = onnx.load_model_from_string(data)
    lazy, slices = wire.open_model(path)
    # only large raw_data of main-graph initializers is left in the file
    expected = {
        t.name
        for t in ref.graph.initializer
        if t.HasField("raw_data") and len(t.raw_data) >= wire.MIN_LAZY_BYTES
    }
    lazy_names = {name for name, _, _ in slices}
    assert lazy_names == expected
    spans = _resolve(lazy, slices, data)
    raws = {t.name: t.raw_data for t in ref.graph.initializer}
    for name, offset, length in spans:
        assert data[offset : offset + length] == raws[name]  # exactly the bytes protobuf sees
    assert lazy == ref  # every other field (and unknown fields) equal
    assert lazy.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)


# -- corrupt bytes ---------------------------------------------------------------------------


class _Hang(Exception):
    pass


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _read_or_input_error(path: Path) -> OpenedModel | None:
    """open_model_file: the model, or None for InputError; anything else fails the test."""
    with _time_limit(5):
        try:
            model = open_model_file(path)
        except InputError as exc:
            assert "\n" not in str(exc)
            return None
    return model


def _base_model() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    big = numpy_helper.from_array(rng.normal(size=(2048,)).astype(np.float32), "big")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Identity", ["big"], ["b"]),
    ]
    model = make_model(
        nodes,
        [vinfo("x", 1, [1, 3, 5, 5])],
        [vinfo("c", 1, None), vinfo("b", 1, None)],
        [w, big],
    )
    model.doc_string = "base"
    return model.SerializeToString()


BASE = _base_model()


def _varint_run(n: int) -> bytes:
    return b"\xff" * n + b"\x01"


def _nested(depth: int, inner: bytes = b"") -> bytes:
    """``depth`` graph -> node -> attribute -> graph ... levels, each length-prefixed."""
    msg = inner
    for _ in range(depth):
        msg = _unknown_field(7, msg)
    return msg


CRAFTED = {
    "long_varint_key": _varint_run(11),
    "ten_byte_varint_key": _varint_run(9) + b"\x00",
    "long_varint_length": b"\x3a" + _varint_run(12),
    "length_past_end": b"\x3a\x10abc",
    "huge_declared_length": b"\x3a" + wire.encode_varint((1 << 63) - 1) + b"xyz",
    "huge_length_in_tensor": b"\x08\x08\x3a\x08\x2a" + wire.encode_varint(1 << 40) + b"\x00" * 6,
    "field_number_zero": b"\x02\x00",
    "wire_type_6": b"\x3e\x00",
    "start_group": b"\x3b\x3c",
    "unterminated_group": b"\x08\x08\xa3\x06\x08\x01",
    "end_group_alone": BASE + wire.encode_varint(100 << 3 | 4),
    "mismatched_end_group": BASE
    + wire.encode_varint(100 << 3 | 3)
    + wire.encode_varint(101 << 3 | 4),
    "deep_groups": BASE + wire.encode_varint(100 << 3 | 3) * 200_000,
    "deep_nesting": b"\x08\x08" + _nested(300),
    "deep_graph_in_graph": b"\x08\x08" + _nested(2000, b"\x08\x01"),
    "truncated_varint": b"\x08",
    "only_garbage_ascii": b"this is not an onnx model at all\n" * 10,
    "fixed64_past_end": b"\x08\x08\x39\x00",
}


def _corrupt_cases() -> st.SearchStrategy[bytes]:
    truncations = st.integers(1, len(BASE) - 1).map(lambda n: BASE[:n])
    flips = st.lists(
        st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ).map(lambda edits: _flip(BASE, edits))
    garbage = st.binary(min_size=1, max_size=300)
    prefixed = st.binary(min_size=1, max_size=40).map(lambda junk: junk + BASE)
    return st.one_of(truncations, flips, garbage, prefixed, st.sampled_from(list(CRAFTED.values())))


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos] = value
    return bytes(out)


@FUZZ
@given(data=_corrupt_cases())
def test_corrupt_bytes_give_input_error_or_a_model(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    lazy = _read_or_input_error(path)
    # and the lazy reader accepts what protobuf (bnfold's ordinary reader) accepts
    try:
        eager, _ = read_model(path, load_external_data=False)
    except InputError:
        eager = None
    assert (lazy is None) == (eager is None), (lazy is None, eager is None)
    if lazy is not None and eager is not None:
        inline = [(n, w.offset, w.length) for n, w in lazy.store.slices() if w.path == path]
        _resolve(lazy.model, inline, data)
        assert lazy.model == eager


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_corruptions(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(CRAFTED[name])
    assert _read_or_input_error(path) is None


@pytest.mark.parametrize("name", ["long_varint_key", "deep_graph_in_graph", "truncated"])
def test_cli_inspect_exits_3_in_one_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(BASE[: len(BASE) // 2] if name == "truncated" else CRAFTED[name])
    done = subprocess.run(
        [sys.executable, "-m", "bnfold", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
