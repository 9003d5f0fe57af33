"""Reading and writing model files: clear errors for unusable input, atomic writes, external data.

Strictness is not badness: IR-3 files that fail the ONNX checker but run in onnxruntime are
accepted. What is refused is what cannot work: not a model, missing external data, a node reading
a value nothing produces, an operator domain the model does not import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from bnfold.errors import InputError, OutputError
from bnfold.graph import DEFAULT_DOMAINS, subgraphs
from bnfold.wire import is_self_reference, open_model
from bnfold.writer import write_model

#: protobuf cannot serialize a message of 2 GiB or more; such models must keep data external.
PROTOBUF_LIMIT = 2**31 - 1


def uses_external_data(model: onnx.ModelProto) -> bool:
    """True when any initializer (main graph or subgraph) stores its data in an external file
    (not counting weights bnfold left inline in the model file it opened)."""
    return any(
        t.data_location == TensorProto.EXTERNAL and not is_self_reference(t)
        for t in _all_initializers(model.graph)
    )


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The external data files the model's tensors name, each once, in order."""
    found: dict[str, None] = {}
    for t in _all_initializers(model.graph):
        if t.data_location == TensorProto.EXTERNAL and not is_self_reference(t):
            for e in t.external_data:
                if e.key == "location":
                    found[e.value] = None
    return list(found)


def _all_initializers(graph: onnx.GraphProto) -> list[TensorProto]:
    found = list(graph.initializer)
    for node in graph.node:
        for _, body in subgraphs(node):
            found.extend(_all_initializers(body))
    return found


def load_model(path: str | os.PathLike[str], *, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse a model file (and its external data) or raise InputError saying what is wrong."""
    return read_model(path, load_external_data=load_external_data)[0]


def read_model(
    path: str | os.PathLike[str], *, load_external_data: bool = True, lazy: bool = False
) -> tuple[onnx.ModelProto, bool]:
    """Like ``load_model``, also saying whether the file kept tensors in external data.

    With ``load_external_data=False`` the external files are checked but not read: the tensors
    keep pointing at them (bnfold reads the few it folds, and copies the rest when writing).
    ``lazy`` also leaves the large inline weights in the file (see ``bnfold.wire``); such a model
    is for bnfold's own reader and writer, which know where to find them.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", hint="check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a model file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty", hint="re-export or re-download the model")
    try:
        model = open_model(p) if lazy else onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{p}: not a readable ONNX model ({_first_line(exc) or 'protobuf parse failed'})",
            hint="is the file truncated or of another format?",
        ) from None
    check_structure(model, p)
    external = uses_external_data(model)
    if external:
        _check_external_files(model, p)
    if load_external_data and external and not lazy:
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise InputError(f"{p}: cannot read its external data ({_first_line(exc)})") from None
    return model, external


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_external_files(model: onnx.ModelProto, path: Path) -> None:
    for tensor in _all_initializers(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (path.parent / location).resolve()
        if not location or not target.is_file():
            raise InputError(
                f"{path}: external data file '{location}' for tensor '{tensor.name}' is missing",
                hint="keep the .data file next to the model",
            )
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > target.stat().st_size:
            raise InputError(
                f"{path}: external data file '{location}' is shorter than tensor "
                f"'{tensor.name}' needs (truncated copy?)"
            )


def check_structure(model: onnx.ModelProto, path: Path | str = "<model>") -> None:
    """Refuse what cannot be a working model; accept what is merely not checker-clean."""
    if model.ir_version < 1 or not model.HasField("graph"):
        raise InputError(
            f"{path}: not an ONNX model (no graph or IR version)", hint="is this the right file?"
        )
    if not model.graph.output:
        raise InputError(f"{path}: the graph has no outputs")
    domains = {o.domain for o in model.opset_import} | set(DEFAULT_DOMAINS)
    local_functions = {(f.domain, f.name) for f in model.functions}
    _check_graph(model.graph, set(), domains, local_functions, path)


def _check_graph(
    graph: onnx.GraphProto,
    outer: set[str],
    domains: set[str],
    functions: set[tuple[str, str]],
    path: Path | str,
) -> None:
    known = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    produced = {o for n in graph.node for o in n.output if o}
    available = known | produced
    for node in graph.node:
        if node.domain not in domains and (node.domain, node.op_type) not in functions:
            raise InputError(
                f"{path}: node '{node.name or node.op_type}' uses operator domain '{node.domain}', "
                "which the model does not import",
                hint="the model is incomplete or was edited by hand",
            )
        for name in node.input:
            if name and name not in available:
                raise InputError(
                    f"{path}: node '{node.name or node.op_type}' reads '{name}', which nothing "
                    "in the graph produces",
                    hint="the model is incomplete or was edited by hand",
                )
        for _, body in subgraphs(node):
            _check_graph(body, available, domains, functions, path)
    for out in graph.output:
        if out.name not in available:
            raise InputError(f"{path}: graph output '{out.name}' is not produced by anything")


class StagedModel:
    """A model written into a temporary folder beside its destination, not yet visible there.

    Verification runs on ``path``; ``commit()`` renames the files into place (data file first),
    so readers of the destination never see a half-written or unverified model.
    """

    def __init__(self, tmpdir: Path, target: Path, data_name: str | None) -> None:
        self.tmpdir = tmpdir
        self.target = target
        self.data_name = data_name

    @property
    def path(self) -> Path:
        return self.tmpdir / self.target.name

    def commit(self) -> list[Path]:
        """Move the staged files into place; returns the files written."""
        written = []
        try:
            if self.data_name and (self.tmpdir / self.data_name).exists():
                data_target = self.target.parent / self.data_name
                os.replace(self.tmpdir / self.data_name, data_target)
                written.append(data_target)
            os.replace(self.path, self.target)
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot write ({exc.strerror or exc})") from None
        written.append(self.target)
        return written


@contextmanager
def stage_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    held: dict[str, Any] | None = None,
) -> Iterator[StagedModel]:
    """Write ``model`` into a temporary folder beside ``path``; removed again on exit.

    With external data (kept when the input had it, forced past protobuf's 2 GiB limit) the
    tensors go to ``<name>.data`` beside the model. ``source_dir`` is where tensors that still
    point at the input's external data file find it.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(
            f"{target}: output folder {folder} does not exist", hint="create it, or choose another"
        )
    if not os.access(folder, os.W_OK):
        raise OutputError(
            f"{target}: output folder {folder} is not writable", hint="choose another -o/--output"
        )
    unloaded = uses_external_data(model)
    if unloaded and (external_data is False or source_dir is None):
        raise ValueError(
            "the model has tensors left in external data: write it with external data and the "
            "source folder (source_dir), or load the data first"
        )
    if unloaded:
        external_data = True
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder))
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    try:
        staged = StagedModel(tmpdir, target, target.name + ".data")
        try:
            write_model(
                model,
                staged.path,
                external=external_data,
                data_name=staged.data_name,
                source_dir=source_dir,
                limit=PROTOBUF_LIMIT,
                held=held,
            )
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
        yield staged
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def save_model_atomic(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write ``model`` to ``path`` so that readers never see a half-written file."""
    with stage_model(model, path, external_data=external_data) as staged:
        return staged.commit()
