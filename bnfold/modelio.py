"""Reading and writing model files: clear errors for unusable input, atomic writes, external data.

Strictness is not badness: IR-3 files that fail the ONNX checker but run in onnxruntime are
accepted. What is refused is what cannot work: not a model, missing external data, a node reading
a value nothing produces, an operator domain the model does not import.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from bnfold import proto
from bnfold.errors import InputError, OutputError
from bnfold.graph import DEFAULT_DOMAINS, subgraphs
from bnfold.proto import TensorProto
from bnfold.store import FileSlice, TensorStore
from bnfold.wire import open_model
from bnfold.writer import (
    element_count,
    expected_nbytes,
    external_ref,
    graph_tensors,
    node_tensors,
    write_model,
)

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
    _check_tensors(model, p)
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
    _check_tensors(model, p, headers=set(left))
    external = uses_external_data(model)
    store = TensorStore()
    for tensor in model.graph.initializer:
        if tensor.name in left:
            offset, length = left[tensor.name]
            _check_size(tensor, length, "raw data", p)
            store.put_file(tensor.name, FileSlice(p, offset, length))
        elif tensor.data_location == TensorProto.EXTERNAL:
            store.put_file(tensor.name, external_ref(tensor, p.parent))  # checked above
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
    return OpenedModel(model, external, store, p)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_tensors(
    model: proto.ModelProto, path: Path, headers: frozenset[str] | set[str] = frozenset()
) -> None:
    """Refuse tensors whose data cannot be what their dims and type say, and external data
    outside the model's folder, before anything reads them (``headers``: main-graph
    initializers whose bytes were left in the file, checked by their caller)."""
    main = (t for t in model.graph.initializer if t.name not in headers)
    rest = (t for node in model.graph.node for t in node_tensors(node))
    functions = (t for f in model.functions for node in f.node for t in node_tensors(node))
    for tensor in itertools.chain(main, rest, functions):
        try:
            _check_tensor(tensor, path.parent)
        except InputError as exc:
            raise InputError(f"{path}: {exc.message}", hint=exc.hint) from None
    for sparse in _sparse_tensors(model):
        for part in (sparse.values, sparse.indices):
            if part.data_location == TensorProto.EXTERNAL:
                raise InputError(
                    f"{path}: sparse tensor '{part.name or sparse.values.name}' keeps its data in "
                    "an external file, which bnfold does not read or write",
                    hint="store the sparse tensor inline",
                )


def _sparse_tensors(model: proto.ModelProto) -> Iterator[Any]:
    """Every sparse tensor: sparse initializers and sparse attribute values, in every graph."""

    def in_graph(graph: proto.GraphProto) -> Iterator[Any]:
        yield from graph.sparse_initializer
        for node in graph.node:
            yield from in_nodes([node])

    def in_nodes(nodes: Any) -> Iterator[Any]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor
                yield from attr.sparse_tensors
                if attr.HasField("g"):
                    yield from in_graph(attr.g)
                for g in attr.graphs:
                    yield from in_graph(g)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


#: The typed field that holds each element type's values, and values per element.
_TYPED_FIELDS: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.STRING: ("string_data", 1),
    **{
        t: ("int32_data", 1)
        for t in (
            TensorProto.INT32,
            TensorProto.INT16,
            TensorProto.INT8,
            TensorProto.UINT16,
            TensorProto.UINT8,
            TensorProto.BOOL,
            TensorProto.FLOAT16,
            TensorProto.BFLOAT16,
        )
    },
}


def _check_tensor(tensor: TensorProto, base_dir: Path) -> None:
    if tensor.data_location == TensorProto.EXTERNAL and tensor.data_type in (
        TensorProto.STRING,
        TensorProto.UNDEFINED,
    ):
        raise InputError(f"tensor '{tensor.name}': string tensors cannot have external data")
    if tensor.data_location == TensorProto.EXTERNAL:
        have, what = external_ref(tensor, base_dir).length, "external data"
    elif tensor.HasField("raw_data"):
        have, what = len(tensor.raw_data), "raw data"
    else:
        typed = _TYPED_FIELDS.get(tensor.data_type)
        if typed is None:
            return
        name, per = typed
        count, want = len(getattr(tensor, name)), element_count(tensor) * per
        if count != want:
            raise InputError(
                f"tensor '{tensor.name}' holds {count} values, but its shape {list(tensor.dims)} "
                f"needs {want}",
                hint="the model is damaged or was edited by hand",
            )
        return
    _check_size(tensor, have, what)


def _check_size(tensor: TensorProto, have: int, what: str, path: Path | None = None) -> None:
    need = expected_nbytes(tensor)  # also refuses negative dims
    if need is not None and have != need:
        where = f"{path}: " if path is not None else ""
        raise InputError(
            f"{where}tensor '{tensor.name}' has {have} bytes of {what}, but its shape "
            f"{list(tensor.dims)} and type need {need}",
            hint="the model or its data file is damaged, truncated or from another model",
        )


def check_structure(model: proto.ModelProto, path: Path | str = "<model>") -> None:
    """Refuse what cannot be a working model; accept what is merely not checker-clean."""
    if model.ir_version < 1 or not model.HasField("graph"):
        raise InputError(
            f"{path}: not an ONNX model (no graph or IR version)", hint="is this the right file?"
        )
    if not model.graph.output:
        raise InputError(f"{path}: the graph has no outputs")
    seen: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.name in seen:
            raise InputError(
                f"{path}: two initializers of the main graph are named '{tensor.name}'",
                hint="the model is damaged or was edited by hand",
            )
        seen.add(tensor.name)
    domains = {o.domain for o in model.opset_import} | set(DEFAULT_DOMAINS)
    local_functions = {(f.domain, f.name) for f in model.functions}
    _check_graph(model.graph, set(), domains, local_functions, path)


def _check_graph(
    graph: proto.GraphProto,
    outer: set[str],
    domains: set[str],
    functions: set[tuple[str, str]],
    path: Path | str,
) -> None:
    known = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, proto.NodeProto] = {}
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        for o in node.output:
            if not o:
                continue
            if o in producer or o in initializers:
                raise InputError(
                    f"{path}: '{o}' is produced by node '{node.name or node.op_type}' and also by "
                    + ("an initializer" if o in initializers else "another node"),
                    hint="the model is damaged or was edited by hand",
                )
            producer[o] = node
    produced = set(producer)
    available = known | produced
    _check_acyclic(graph, producer, path)
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


def _check_acyclic(
    graph: proto.GraphProto, producer: dict[str, proto.NodeProto], path: Path | str
) -> None:
    """Refuse a graph whose nodes read, directly or not, their own outputs (Kahn's algorithm)."""
    nodes = list(graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            source = producer.get(name)
            if source is not None:
                waiting[i] += 1
                readers.setdefault(index[id(source)], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if done < len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i] > 0)
        raise InputError(
            f"{path}: node '{stuck.name or stuck.op_type}' is part of a cycle (it reads, through "
            "other nodes, its own output)",
            hint="the model is damaged or was edited by hand",
        )


class StagedModel:
    """A model written into a temporary folder beside its destination, not yet visible there.

    Verification runs on ``path``; ``commit()`` renames the files into place (data file first),
    so readers of the destination never see a half-written or unverified model.
    """

    def __init__(self, tmpdir: Path, target: Path, data_name: str | None) -> None:
        self.tmpdir = tmpdir
        self.target = target
        self.data_name = data_name
        self.committed = False

    @property
    def path(self) -> Path:
        return self.tmpdir / self.target.name

    def commit(self) -> list[Path]:
        """Move the staged files into place; returns the files written.

        Model and data file change together or not at all: the data file goes first (so the
        new model never points into old data), and if the model then cannot be renamed into
        place (an immutable file, a full disk, a permission), the data file that was there is
        put back and nothing has changed.
        """
        data = self.tmpdir / self.data_name if self.data_name else None
        if data is None or not data.exists():
            self._replace(self.path, self.target)
            self.committed = True
            return [self.target]
        data_target = self.target.parent / data.name
        backup = self._keep(data_target)
        self._replace(data, data_target)
        try:
            self._replace(self.path, self.target)
        except OutputError:
            try:
                if backup is not None:
                    os.replace(backup, data_target)
                else:
                    data_target.unlink()
            except OSError as exc:
                raise OutputError(
                    f"{self.target}: cannot write, and {data_target} could not be restored "
                    f"({exc.strerror or exc}); the old data file is in {backup}"
                ) from None
            raise
        self.committed = True
        return [data_target, self.target]

    def _keep(self, path: Path) -> Path | None:
        """A second name for the file at ``path`` in the staging folder, to restore it from."""
        if not path.exists():
            return None
        backup = self.tmpdir / ".previous.data"
        try:
            os.link(path, backup)
        except OSError as exc:
            raise OutputError(
                f"{path}: cannot replace it safely ({exc.strerror or exc})",
                hint="check the output folder's permissions",
            ) from None
        return backup

    def _replace(self, staged: Path, target: Path) -> None:
        try:
            os.replace(staged, target)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None


#: How often staging tries again when a parallel job removed the folder it had just created.
_STAGING_TRIES = 3


def make_folders(folder: Path, target: Path | None = None) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders this call created,
    outermost first (a folder a parallel job made at the same moment is not one of them).
    OutputError (naming ``target``, the file to be written there) when one cannot be created;
    the ones made before it are removed again."""
    name = target if target is not None else folder
    missing: list[Path] = []
    probe = folder
    while not _exists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if path.is_dir():
                continue  # a parallel job was first: its folder, not ours to remove
            remove_folders(created)
            raise OutputError(
                f"{name}: cannot create the output folder ({path} is a file)",
                hint="choose another -o/--output",
            ) from None
        except OSError as exc:
            remove_folders(created)
            raise OutputError(
                f"{name}: cannot create the output folder ({exc.strerror or exc})",
                hint="choose another -o/--output",
            ) from None
        created.append(path)
    return created


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links: let mkdir say what is wrong
        return False


def remove_folders(created: list[Path]) -> None:
    """Remove the folders ``make_folders`` created, innermost first, as far as they are empty
    (a parallel job may have written into one since: that one and its parents stay)."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def _staging_folder(target: Path, folder: Path, make: bool) -> tuple[Path, list[Path]]:
    """The temporary folder beside ``target`` and the output folders created for it (``make``:
    missing ones are created; else a missing folder is an OutputError)."""
    for _ in range(_STAGING_TRIES):
        created = make_folders(folder, target) if make else []
        if not folder.is_dir():
            raise OutputError(
                f"{target}: output folder {folder} does not exist",
                hint="create it, or choose another",
            )
        if not os.access(folder, os.W_OK):
            remove_folders(created)
            raise OutputError(
                f"{target}: output folder {folder} is not writable", hint="choose another output"
            )
        try:
            return Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder)), created
        except FileNotFoundError:
            if not make:
                raise OutputError(f"{target}: output folder {folder} does not exist") from None
            continue  # a parallel job removed the folder it had made: make it again
        except OSError as exc:
            remove_folders(created)
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    raise OutputError(f"{target}: cannot write (its folder {folder} keeps disappearing)")


@contextmanager
def stage_model(
    model: proto.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    store: TensorStore | None = None,
    create_folders: bool = False,
) -> Iterator[StagedModel]:
    """Write ``model`` into a temporary folder beside ``path``; removed again on exit.

    With external data (kept when the input had it, forced past protobuf's 2 GiB limit) the
    tensors go to ``<name>.data`` beside the model. ``source_dir`` is where tensors that still
    point at the input's external data file find it. With ``create_folders`` the output's missing
    folders are created, and removed again on exit unless the model was committed there.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    unloaded = uses_external_data(model)
    if unloaded and (external_data is False or source_dir is None):
        raise ValueError(
            "the model has tensors left in external data: write it with external data and the "
            "source folder (source_dir), or load the data first"
        )
    if unloaded:
        external_data = True
    tmpdir, created = _staging_folder(target, folder, create_folders)
    staged = StagedModel(tmpdir, target, target.name + ".data")
    try:
        try:
            write_model(
                model,
                staged.path,
                external=external_data,
                data_name=staged.data_name,
                source_dir=source_dir,
                limit=PROTOBUF_LIMIT,
                store=store,
            )
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
        yield staged
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if not staged.committed:
            remove_folders(created)


def save_model_atomic(
    model: proto.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write ``model`` to ``path`` so that readers never see a half-written file."""
    with stage_model(model, path, external_data=external_data) as staged:
        return staged.commit()
