"""Write a ModelProto to disk one node and one tensor at a time.

``SerializeToString`` builds the whole file in one buffer: for a 100 MB model that is two more
copies of every weight alive at once (upb's buffer and the Python bytes) and a slow, growing
reallocation. Writing the graph's elements one by one gives the same bytes (protobuf lays fields
out in field-number order, so the pieces concatenate to exactly what the serializer would emit)
with only one small buffer at a time.

With external data, tensor contents go to one data file beside the model. Tensors that still live
in the *source* model's data file (bnfold reads external weights lazily) are copied across in
chunks without ever being loaded, so a model over 2 GB folds in little more than the memory of
the tensors it actually changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy.typing as npt
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bnfold.model import proto
from bnfold.model.external import ExternalRef, external_ref
from bnfold.model.proto import TensorProto
from bnfold.model.store import FileSlice, Source, TensorStore
from bnfold.model.tensors import expected_nbytes, node_tensors
from bnfold.model.wire import encode_varint
from bnfold.numerics.arith import LazyScaled

#: Tensors with at least this many bytes of raw data go to the external data file.
EXTERNAL_THRESHOLD = 1024
#: Large tensors start on a page boundary in the data file, so readers can memory-map them.
ALIGN_FROM = 1 << 20
ALIGNMENT = 4096
_CHUNK = 16 << 20

_MODEL_GRAPH = proto.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER = proto.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_GRAPH_NODE = proto.GraphProto.DESCRIPTOR.fields_by_name["node"].number
_TENSOR_EXTERNAL = TensorProto.DESCRIPTOR.fields_by_name["external_data"].number
_TENSOR_LOCATION = TensorProto.DESCRIPTOR.fields_by_name["data_location"].number
_TENSOR_RAW = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_NOT_IN_HEADER = (_TENSOR_RAW, _TENSOR_EXTERNAL, _TENSOR_LOCATION)


def _prefix(number: int, length: int) -> bytes:
    """Key and length of a length-delimited field."""
    return encode_varint(number << 3 | 2) + encode_varint(length)


def _repeated(fd: FieldDescriptor) -> bool:
    # protobuf 6+ has ``is_repeated`` and has dropped ``label``; older releases only ``label``
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _set_field(target: Message, fd: FieldDescriptor, value: Any) -> None:
    if _repeated(fd):
        getattr(target, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(target, fd.name).CopyFrom(value)
    else:
        setattr(target, fd.name, value)


def _field_bytes(msg: Message, fd: FieldDescriptor, value: Any) -> bytes:
    """The serialized form of one field of ``msg`` on its own."""
    tiny = type(msg)()
    _set_field(tiny, fd, value)
    data: bytes = tiny.SerializeToString()
    return data


# -- where tensor contents go -------------------------------------------------------------------


Job = Callable[[BinaryIO], None]


@dataclass
class _DataLayout:
    """Offsets in the output data file, handed out in the order the tensors are written."""

    name: str
    source_dir: Path | None
    size: int = 0
    jobs: list[tuple[int, Job]] = field(default_factory=list)

    def place(self, tensor: TensorProto, length: int, job: Job) -> None:
        """Give ``tensor`` the next slot of ``length`` bytes and point it there."""
        offset = self.size
        if length >= ALIGN_FROM:
            offset = -(-offset // ALIGNMENT) * ALIGNMENT
        self.size = offset + length
        self.jobs.append((offset, job))
        del tensor.external_data[:]
        for key, value in (("location", self.name), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        tensor.data_location = TensorProto.EXTERNAL

    def externalize(
        self, tensor: TensorProto, header: TensorProto, source: Source | None = None
    ) -> None:
        """Point ``header`` (a copy of ``tensor`` without its data) into the data file; the bytes
        come from ``source`` (the model's store) if given, else from the tensor."""
        if isinstance(source, FileSlice):
            self.place(header, source.length, _copy_job(source))
        elif source is not None:
            self.place(header, source.nbytes, _array_job(source))
        elif tensor.data_location == TensorProto.EXTERNAL:
            if self.source_dir is None:
                raise ValueError(f"tensor '{tensor.name}' keeps external data, but from where?")
            ref = external_ref(tensor, self.source_dir)
            self.place(header, ref.length, _copy_job(ref))
        else:
            self.place(header, _raw_size(tensor), _raw_job(tensor))


def _write_values(out: BinaryIO, values: npt.NDArray[Any] | LazyScaled) -> None:
    """A held array's bytes (no copy), or a lazy fold's, computed chunk by chunk."""
    for chunk in TensorStore.chunks(values):
        out.write(chunk)


def _array_job(array: npt.NDArray[Any] | LazyScaled) -> Job:
    def write(out: BinaryIO) -> None:
        _write_values(out, array)

    return write


def _raw_job(tensor: TensorProto) -> Job:
    def write(out: BinaryIO) -> None:
        out.write(tensor.raw_data)

    return write


def _copy_job(ref: ExternalRef) -> Job:
    def copy(out: BinaryIO) -> None:
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            left = ref.length
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"external data file {ref.path} ends early")
                out.write(chunk)
                left -= len(chunk)

    return copy


def _goes_external(tensor: TensorProto) -> bool:
    if tensor.data_location == TensorProto.EXTERNAL:
        return True
    return tensor.HasField("raw_data") and _raw_size(tensor) >= EXTERNAL_THRESHOLD


def _header_fields(tensor: TensorProto) -> tuple[TensorProto, TensorProto]:
    """Copies of ``tensor``'s fields that come before and after raw_data, without its data
    (not via ListFields: that would copy raw_data)."""
    before, after = TensorProto(), TensorProto()
    for fd in TensorProto.DESCRIPTOR.fields:
        if fd.number in _NOT_IN_HEADER:
            continue
        value = getattr(tensor, fd.name)
        if (len(value) if _repeated(fd) else tensor.HasField(fd.name)) == 0:
            continue
        _set_field(before if fd.number < _TENSOR_RAW else after, fd, value)
    return before, after


def _header(tensor: TensorProto) -> TensorProto:
    """A copy of ``tensor`` with every field but its data."""
    before, after = _header_fields(tensor)
    before.MergeFrom(after)
    before.MergeFromString(_unknown_bytes(tensor))  # kept as unknown fields again
    return before


# -- the plan: every piece of the file with its size, before anything is written ----------------


def _raw_size(tensor: TensorProto) -> int:
    """Length of ``tensor.raw_data`` from its dims and type (reading it would copy it)."""
    n = expected_nbytes(tensor)
    return len(tensor.raw_data) if n is None else n


@dataclass(frozen=True)
class _InlineTensor:
    """A tensor written as its fields before raw_data, the raw bytes, then the rest: the bytes go
    straight from the model (or the file they were left in) to the output, never through a
    serialized copy of the tensor."""

    before: bytes
    tensor: TensorProto
    size: int
    after: bytes
    source: ExternalRef | None = None  # where the bytes are when not in the model
    array: npt.NDArray[Any] | LazyScaled | None = None  # or the values bnfold holds for it

    def write(self, out: BinaryIO) -> None:
        out.write(self.before)
        out.write(_prefix(_TENSOR_RAW, self.size))
        if self.array is not None:
            _write_values(out, self.array)
        elif self.source is not None:
            _copy_job(self.source)(out)
        else:
            raw = self.tensor.raw_data
            if len(raw) != self.size:
                raise ValueError(
                    f"tensor '{self.tensor.name}' holds {len(raw)} bytes of raw data, but its "
                    f"shape and type need {self.size}"
                )
            out.write(raw)
        out.write(self.after)


def _tail(tensor: TensorProto, after: TensorProto) -> bytes:
    """The tensor's fields after raw_data, then any fields this onnx does not know."""
    return bytes(after.SerializeToString()) + _unknown_bytes(tensor)


def _inline_tensor(
    tensor: TensorProto, source_dir: Path | None, stored: Source | None = None
) -> tuple[_InlineTensor, int]:
    """``tensor`` laid out with its data inline: from ``stored`` (its source in the model's
    store) if given, else from its external file if it is there, else its own raw data."""
    source = stored if isinstance(stored, FileSlice) else None
    array = stored if stored is not None and not isinstance(stored, FileSlice) else None
    if array is not None:
        before, after = _header_fields(tensor)
        piece = _InlineTensor(
            before.SerializeToString(), tensor, array.nbytes, _tail(tensor, after), None, array
        )
        n = array.nbytes
        return piece, len(piece.before) + len(_prefix(_TENSOR_RAW, n)) + n + len(piece.after)
    if source is None and tensor.data_location == TensorProto.EXTERNAL:
        if source_dir is None:
            raise ValueError(f"tensor '{tensor.name}' keeps external data, but from where?")
        source = external_ref(tensor, source_dir)
    before, after = _header_fields(tensor)
    n = source.length if source is not None else _raw_size(tensor)
    piece = _InlineTensor(before.SerializeToString(), tensor, n, _tail(tensor, after), source)
    return piece, len(piece.before) + len(_prefix(_TENSOR_RAW, n)) + n + len(piece.after)


Piece: TypeAlias = bytes | Message | _InlineTensor


@dataclass
class _Plan:
    source_dir: Path | None = None
    size: int = 0
    pieces: list[Piece] = field(default_factory=list)

    def add(self, piece: Piece, size: int | None = None) -> None:
        self.pieces.append(piece)
        self.size += len(piece) if isinstance(piece, bytes) else int(size or 0)

    def add_element(self, number: int, element: Message) -> None:
        if isinstance(element, TensorProto) and (
            element.HasField("raw_data") or element.data_location == TensorProto.EXTERNAL
        ):
            inline, size = _inline_tensor(element, self.source_dir)
            self.add(_prefix(number, size))
            self.add(inline, size)
            return
        size = element.ByteSize()
        self.add(_prefix(number, size))
        self.add(element, size)


def _plan_graph(
    graph: proto.GraphProto,
    data: _DataLayout | None,
    source: Path | None,
    store: TensorStore | None,
) -> _Plan:
    """The main graph: its initializers with a source in ``store`` are headers whose bytes come
    from there (every other tensor carries its own data, or points at the input's data file)."""
    plan = _Plan(source)
    for fd, value in graph.ListFields():
        if not _repeated(fd) or fd.message_type is None:
            plan.add(_field_bytes(graph, fd, value))
            continue
        for element in value:
            stored = None
            if store is not None and fd.number == _GRAPH_INITIALIZER:
                stored = store.source(element.name)
            if (
                data is not None
                and fd.number == _GRAPH_INITIALIZER
                and (stored is not None or _goes_external(element))
            ):
                header = _header(element)
                data.externalize(element, header, stored)
                plan.add(_prefix(fd.number, header.ByteSize()) + header.SerializeToString())
            elif stored is not None:
                inline, size = _inline_tensor(element, source, stored)
                plan.add(_prefix(fd.number, size))
                plan.add(inline, size)
            elif data is not None and fd.number == _GRAPH_NODE:
                plan.add_element(fd.number, _plan_node(element, data))
            else:
                plan.add_element(fd.number, element)
    plan.add(_unknown_bytes(graph))
    return plan


def _plan_node(node: proto.NodeProto, data: _DataLayout) -> proto.NodeProto:
    """The node itself, or a copy whose large tensors point into the data file."""
    if not any(_goes_external(t) for t in node_tensors(node)):
        return node
    copy = proto.NodeProto()
    copy.CopyFrom(node)
    for original, mirror in zip(node_tensors(node), node_tensors(copy), strict=True):
        if _goes_external(original):
            data.externalize(original, mirror)
            mirror.ClearField("raw_data")
    return copy


def _plan_model(
    model: proto.ModelProto,
    data: _DataLayout | None,
    source: Path | None,
    store: TensorStore | None,
) -> _Plan:
    plan = _Plan(source)
    for fd, value in model.ListFields():
        if fd.number == _MODEL_GRAPH:
            graph = _plan_graph(value, data, source, store)
            plan.add(_prefix(fd.number, graph.size))
            plan.pieces.extend(graph.pieces)
            plan.size += graph.size
        else:
            plan.add(_field_bytes(model, fd, value))
    plan.add(_unknown_bytes(model))
    return plan


def _unknown_bytes(msg: Message) -> bytes:
    """Fields this onnx version does not know, re-encoded where protobuf puts them: at the end."""
    return _encode_unknown(unknown_fields.UnknownFieldSet(msg))


def _encode_unknown(fields: Any) -> bytes:
    out = bytearray()
    for f in fields:
        key = encode_varint(f.field_number << 3 | f.wire_type)
        if f.wire_type == 0:
            out += key + encode_varint(f.data)
        elif f.wire_type == 1:
            out += key + int(f.data).to_bytes(8, "little")
        elif f.wire_type == 5:
            out += key + int(f.data).to_bytes(4, "little")
        elif f.wire_type == 2:
            out += key + encode_varint(len(f.data)) + bytes(f.data)
        else:  # a (proto2) group: its fields, then the end tag
            end = encode_varint(f.field_number << 3 | 4)
            out += key + _encode_unknown(f.data) + end
    return bytes(out)


def write_model(
    model: proto.ModelProto,
    path: str | os.PathLike[str],
    *,
    external: bool | None = False,
    data_name: str | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    limit: int = 2**31 - 1,
    store: TensorStore | None = None,
) -> bool:
    """Write ``model`` to ``path``; the model itself is not changed.

    With ``external`` (or, when it is None, if the file would be over ``limit`` bytes) tensors of
    1 KiB or more go to ``data_name`` beside it. ``source_dir`` is the folder of the file the model
    was read from, for tensors whose data was left in its external data file; ``store`` says
    where the bytes of the main graph's header initializers are (``bnfold.model.store``). Returns
    whether external data was written.
    """
    target = Path(path)
    name = data_name or target.name + ".data"
    source = Path(source_dir) if source_dir is not None else None
    data = _DataLayout(name, source) if external else None
    plan = _plan_model(model, data, source, store)
    if external is None and plan.size > limit:
        data = _DataLayout(name, source)
        plan = _plan_model(model, data, source, store)
    with open(target, "wb") as out:
        for piece in plan.pieces:
            if isinstance(piece, bytes):
                out.write(piece)
            elif isinstance(piece, _InlineTensor):
                piece.write(out)
            else:
                out.write(piece.SerializeToString())
    if data is not None and data.jobs:
        with open(target.parent / data.name, "wb") as out:
            for offset, job in data.jobs:
                out.write(bytes(offset - out.tell()))
                job(out)
    return data is not None
