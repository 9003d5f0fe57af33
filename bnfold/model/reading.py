"""Reading a model file: clear errors for unusable input, weights left where they are.

Strictness is not badness: IR-3 files that fail the ONNX checker but run in onnxruntime are
accepted. What is refused is what cannot work (see ``checks``): not a model, missing external
data, a node reading a value nothing produces, an operator domain the model does not import.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from bnfold.errors import InputError
from bnfold.model import proto
from bnfold.model.checks import check_size, check_structure, check_tensors
from bnfold.model.external import external_ref
from bnfold.model.proto import TensorProto
from bnfold.model.store import FileSlice, TensorStore
from bnfold.model.tensors import graph_tensors, node_tensors
from bnfold.model.wire import open_model

#: protobuf cannot serialize a message of 2 GiB or more; such models must keep data external.
PROTOBUF_LIMIT = 2**31 - 1


def uses_external_data(model: proto.ModelProto) -> bool:
    """True when any tensor (initializers and attribute values, in every graph and function)
    stores its data in an external file, as the proto says (an opened model's main-graph
    initializers have their bytes in its ``TensorStore`` instead)."""
    return any(_is_external(t) for t in all_tensors(model))


def external_locations(model: proto.ModelProto) -> list[str]:
    """The external data files the model's tensors name, each once, in order."""
    found: dict[str, None] = {}
    for t in all_tensors(model):
        if _is_external(t):
            for e in t.external_data:
                if e.key == "location":
                    found[e.value] = None
    return list(found)


def _is_external(tensor: TensorProto) -> bool:
    return bool(tensor.data_location == TensorProto.EXTERNAL)


def all_tensors(model: proto.ModelProto) -> Iterator[TensorProto]:
    """Every tensor of the model: initializers and node attributes, in the main graph, its
    subgraphs and the model-local functions."""
    yield from graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from node_tensors(node)


def load_model(
    path: str | os.PathLike[str], *, load_external_data: bool = True
) -> proto.ModelProto:
    """Parse a model file (and its external data) or raise InputError saying what is wrong."""
    return read_model(path, load_external_data=load_external_data)[0]


def _model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a regular, non-empty file; else InputError saying what it is."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a folder, not a model file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: not a regular file (a pipe or device?)", hint="pass a model file")
    if st.st_size == 0:
        raise InputError(f"{p}: the file is empty", hint="re-export or re-download the model")
    return p


@contextmanager
def _parse_errors(p: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{p}: not a readable ONNX model ({_first_line(exc) or 'protobuf parse failed'})",
            hint="is the file truncated or of another format?",
        ) from None


def read_model(
    path: str | os.PathLike[str], *, load_external_data: bool = True
) -> tuple[proto.ModelProto, bool]:
    """Like ``load_model``, also saying whether the file kept tensors in external data.

    With ``load_external_data=False`` the external files are checked but not read: the tensors
    keep pointing at them.
    """
    p = _model_file(path)
    with _parse_errors(p):
        model = proto.ModelProto.FromString(p.read_bytes())
    check_structure(model, p)
    check_tensors(model, p)
    external = uses_external_data(model)
    if load_external_data and external:
        onnx = proto.full_onnx()
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise InputError(f"{p}: cannot read its external data ({_first_line(exc)})") from None
    return model, external


@dataclass
class OpenedModel:
    """A model file opened without its weights: the model, whose main-graph initializers with
    large data are headers, and the ``TensorStore`` that says where their bytes are."""

    model: proto.ModelProto
    external: bool  # the file kept tensors in external data (the output will too)
    store: TensorStore
    path: Path

    def files(self) -> set[Path]:
        """Every file the model's bytes come from: itself and its external data files."""
        found = {self.path}
        found.update(where.path for _, where in self.store.slices())
        found.update(self.path.parent / loc for loc in external_locations(self.model))
        return found


def open_model_file(path: str | os.PathLike[str]) -> OpenedModel:
    """Open the model at ``path`` for folding: the graph is parsed, the large main-graph weights
    (inline or in external data) stay where they are, checked, with a source in the store.
    Raises InputError for anything that cannot be a working model."""
    p = _model_file(path)
    with _parse_errors(p):
        model, slices = open_model(p)
    check_structure(model, p)
    left = {name: (offset, length) for name, offset, length in slices}
    check_tensors(model, p, headers=set(left))
    external = uses_external_data(model)
    store = TensorStore()
    for tensor in model.graph.initializer:
        if tensor.name in left:
            offset, length = left[tensor.name]
            check_size(tensor, length, "raw data", p)
            store.put_file(tensor.name, FileSlice(p, offset, length))
        elif tensor.data_location == TensorProto.EXTERNAL:
            store.put_file(tensor.name, external_ref(tensor, p.parent))  # checked above
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
    return OpenedModel(model, external, store, p)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def shapeless_inputs(model: proto.ModelProto) -> list[str]:
    """The graph inputs (not initializers) that declare no shape at all: their rank is unknown.
    onnxruntime reports such an input as a scalar (shape []), so a child that runs the model is
    told which inputs they are, to make data only of a shape the user gives."""
    initializers = {t.name for t in model.graph.initializer}
    return [
        vi.name
        for vi in model.graph.input
        if vi.name not in initializers
        and vi.type.HasField("tensor_type")
        and not vi.type.tensor_type.HasField("shape")
    ]
