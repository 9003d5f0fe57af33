"""Open a model file without reading its weights.

A fold changes a few tensors; the rest only need to travel from the input file to the output file.
So the main graph's large inline initializers are not parsed at all: the file is scanned at the
protobuf wire level, and each such tensor is parsed without its ``raw_data``, as a header (name,
type, dims, ...). Where its bytes are in the file (offset and length) is returned beside the
model, for its ``bnfold.model.store.TensorStore``: read when a fold needs them, copied straight from
file to file otherwise. Parsing and memory then scale with the graph, not the weights; the
writer puts the bytes back inline, so the output is the file protobuf itself would have written.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from bnfold.model import proto

#: Initializers with fewer raw bytes than this are parsed as usual (shape tensors, BN statistics
#: of small layers): not worth a file read each, and shape inference needs their values.
MIN_LAZY_BYTES = 4096

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW = 9
_TENSOR_EXTERNAL = 13
_TENSOR_LOCATION = 14


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    found = []
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, value_end = _varint(buf, pos, end)
        elif wire_type == 1:
            value_end = pos + 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos, end)
            value_end = pos + length
        elif wire_type == 5:
            value_end = pos + 4
        elif wire_type == 3:
            value_end = _group_end(buf, pos, end, number)
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if value_end > end or number == 0:
            raise WireError("field runs past the end of its message")
        found.append((number, wire_type, field_start, pos, value_end))
        pos = value_end
    return found


def _group_end(buf: memoryview, pos: int, end: int, number: int) -> int:
    """Where a (proto2) group that starts at ``pos`` ends, after its end tag. No ONNX message has
    groups, but protobuf keeps them as unknown fields, so they must be skipped, not refused."""
    open_groups = [number]  # a loop, not recursion: groups may nest deeper than the stack
    while open_groups:
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == 0:
            _, pos = _varint(buf, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos, end)
            pos += length
        elif wire_type == 5:
            pos += 4
        elif wire_type == 3:
            open_groups.append(number)
        elif wire_type == 4 and number == open_groups[-1]:
            open_groups.pop()
        else:
            raise WireError(f"unexpected wire type {wire_type} in a group")
        if pos > end:
            raise WireError("group runs past the end of its message")
    return pos


def _len_field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


#: (tensor name, offset, length) of raw bytes left in the file.
Slice = tuple[str, int, int]


def _tensor(buf: memoryview, start: int, end: int, slices: list[Slice]) -> bytes:
    """The tensor's bytes, without a large raw_data (whose place is added to ``slices``)."""
    fields = _fields(buf, start, end)
    raws = [f for f in fields if f[0] == _TENSOR_RAW and f[1] == 2]
    external = any(f[0] in (_TENSOR_EXTERNAL, _TENSOR_LOCATION) for f in fields)
    names = [f for f in fields if f[0] == _TENSOR_NAME and f[1] == 2]
    if len(raws) != 1 or external or raws[0][4] - raws[0][3] < MIN_LAZY_BYTES or len(names) > 1:
        return bytes(buf[start:end])
    _, _, _, raw_start, raw_end = raws[0]
    name = bytes(buf[names[0][3] : names[0][4]]).decode("utf-8", "replace") if names else ""
    slices.append((name, raw_start, raw_end - raw_start))
    out = bytearray()
    for number, _, field_start, _, value_end in fields:
        if number != _TENSOR_RAW:
            out += buf[field_start:value_end]
    return bytes(out)


def _graph(buf: memoryview, start: int, end: int, slices: list[Slice]) -> bytes:
    out = bytearray()
    for number, wire_type, field_start, value_start, value_end in _fields(buf, start, end):
        if number == _GRAPH_INITIALIZER and wire_type == 2:
            out += _len_field(number, _tensor(buf, value_start, value_end, slices))
        else:
            out += buf[field_start:value_end]
    return bytes(out)


def open_model(path: str | os.PathLike[str]) -> tuple[proto.ModelProto, list[Slice]]:
    """Parse the model at ``path`` leaving its large main-graph weights in the file: the model
    (those initializers as headers without data) and where each one's bytes are.

    Raises WireError or protobuf's DecodeError when the file is not a protobuf message.
    """
    p = Path(path)
    slices: list[Slice] = []
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buf = memoryview(mapped)
        try:
            out = bytearray()
            for number, wire_type, field_start, value_start, value_end in _fields(buf, 0, len(buf)):
                if number == _MODEL_GRAPH and wire_type == 2:
                    out += _len_field(number, _graph(buf, value_start, value_end, slices))
                else:
                    out += buf[field_start:value_end]
        finally:
            buf.release()
    model = proto.ModelProto()
    model.ParseFromString(bytes(out))
    return model, slices


def model_tail(path: str | os.PathLike[str]) -> tuple[int, bytes]:
    """Where the top-level fields after the graph start in the model file at ``path``, and their
    bytes: metadata_props (field 14), training_info, functions and fields unknown to this onnx.

    A file written in field-number order (protobuf's own serializer and ``bnfold.model.writer``
    both write one) ends with them, so they can be rewritten without reading the graph again.
    Raises WireError when the file is not a protobuf message.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buf = memoryview(mapped)
        try:
            fields = _fields(buf, 0, len(buf))
            after_graph = [f[4] for f in fields if f[0] == _MODEL_GRAPH and f[1] == 2]
            later = [f[2] for f in fields if f[0] > _MODEL_GRAPH]
            start = after_graph[-1] if after_graph else min(later, default=len(buf))
            return start, bytes(buf[start:])
        finally:
            buf.release()
