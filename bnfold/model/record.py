"""The fold record: a small JSON document under the ``metadata_props`` key ``bnfold`` of every
model bnfold writes, saying where it came from (tool version, sha256 of the source file and its
external data), with which options, what was folded and why the rest was not, and what
verification proved.

This module only reads, writes and hashes; ``bnfold.api`` assembles the content. The text is
canonical JSON (sorted keys, no spaces, ASCII) without timestamps or paths, so the same input and
options give the same bytes. A record read from a model is untrusted input like the rest of it:
oversized, deeply nested, non-finite or foreign values are not a record.

metadata_props (field 14) comes after the graph (field 7) in a serialized ModelProto, so once the
model is written the record can be replaced by rewriting only the file's tail (``rewrite``):
verification runs on the staged file, and its outcome goes into the record afterwards without
writing the weights again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bnfold.model import proto
from bnfold.model.wire import WireError, model_tail

#: The metadata key of the record.
KEY = "bnfold"
#: The record's own format version (``"record"`` in it); bumped when a field changes meaning.
FORMAT = 1
#: A record is a few hundred bytes; a larger value, or a deeper one, is not bnfold's.
MAX_TEXT = 64 * 1024
MAX_DEPTH = 8
_CHUNK = 1 << 20

Record = dict[str, Any]


def encode(record: Mapping[str, Any]) -> str:
    """The record as canonical JSON: sorted keys, no spaces, ASCII, finite numbers only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a record holds")


def decode(text: str) -> Record | None:
    """The record in ``text``, or None when it is not one (bad JSON, too large or deep, NaN, not
    an object that says it was written by bnfold)."""
    if len(text) > MAX_TEXT:
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or value.get("tool") != "bnfold" or _depth(value) > MAX_DEPTH:
        return None
    if not isinstance(value.get("record"), int):
        return None
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def find(model: proto.ModelProto) -> str | None:
    """The text stored under ``bnfold`` in the model's metadata (the last one if several)."""
    found = None
    for entry in model.metadata_props:
        if entry.key == KEY:
            found = entry.value
    return found


def read(model: proto.ModelProto) -> Record | None:
    """The model's fold record, or None when it has none (or an unreadable one)."""
    text = find(model)
    return decode(text) if text is not None else None


def put(model: proto.ModelProto, text: str | None) -> None:
    """Store ``text`` as the model's record, in place of the one it had (other metadata keeps its
    order), or at the end; None removes the record."""
    entries = model.metadata_props
    places = [i for i, entry in enumerate(entries) if entry.key == KEY]
    keep = places[:1] if text is not None else []
    for i in reversed(places):
        if i not in keep:
            del entries[i]
    if text is None:
        return
    if keep:
        entries[keep[0]].value = text
    else:
        entry = entries.add()
        entry.key, entry.value = KEY, text


def rewrite(path: str | os.PathLike[str], text: str | None) -> None:
    """Replace the record of the model file at ``path`` (written by bnfold's writer, fields in
    number order) by rewriting only the fields after the graph: a few hundred bytes whatever the
    size of the weights. The file ends as the writer would have written it with this record."""
    start, tail = model_tail(path)
    rest = proto.ModelProto()
    rest.ParseFromString(tail)
    put(rest, text)
    data = rest.SerializeToString()
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data)
        f.truncate()


def read_file(path: str | os.PathLike[str]) -> Record | None:
    """The record of the model file at ``path``, read without parsing its graph; None when it has
    none or the file's tail cannot be parsed."""
    try:
        _, tail = model_tail(path)
        rest = proto.ModelProto()
        rest.ParseFromString(tail)
    except (OSError, ValueError, WireError, RuntimeError):
        return None
    return read(rest)


# -- hashes of the source -------------------------------------------------------------------------


def file_digest(path: Path) -> dict[str, Any]:
    """sha256 and size of one file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)  # releases the GIL: the fold goes on meanwhile
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def source_digest(model: Path, data_files: Iterable[Path] = ()) -> dict[str, Any]:
    """The record's ``source``: the model file's sha256 and size, and each external data file's,
    in the order of their names (names and paths are not recorded: a record holds no paths)."""
    external = sorted(set(data_files) - {model}, key=lambda p: p.name)
    return {**file_digest(model), "external_data": [file_digest(p) for p in external]}


def digest_in_background(
    model: Path, data_files: Iterable[Path] = ()
) -> Callable[[], dict[str, Any]]:
    """Start hashing the source in a thread (hashlib releases the GIL while it hashes, so this
    overlaps the fold); the returned function waits for the result and returns it, or raises
    what the thread raised."""
    files = list(data_files)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = source_digest(model, files)
        except BaseException as exc:  # handed to the caller of result()
            box["error"] = exc

    thread = threading.Thread(target=work, name="bnfold-sha256", daemon=True)
    thread.start()

    def result() -> dict[str, Any]:
        thread.join()
        if "error" in box:
            raise box["error"]
        value: dict[str, Any] = box["value"]
        return value

    return result
