"""External data: where a tensor's bytes are in a data file beside the model, and the rule that
only files in the model's own folder are read."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from bnfold.errors import InputError
from bnfold.model.proto import TensorProto
from bnfold.model.store import FileSlice

_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_location(base_dir: Path, location: str) -> Path:
    """The file an external-data ``location`` names, refused unless it is a regular file inside
    ``base_dir`` (the model's folder): a model is untrusted input, and a location such as
    ``../../etc/passwd``, an absolute path or a symlink out of the folder would make bnfold read,
    and copy into its output, a file the model has no business with (onnx's checker refuses the
    same)."""
    if not location:
        raise InputError("an external-data tensor names no location (file)")
    if "\0" in location:
        raise InputError(f"external data location {location!r} is not a file name")
    parts = location.replace("\\", "/").split("/")
    if location.startswith(("/", "\\")) or Path(location).is_absolute() or _DRIVE.match(location):
        raise InputError(
            f"external data location {location!r} is an absolute path; only files in the "
            "model's folder are read"
        )
    if ".." in parts:
        raise InputError(
            f"external data location {location!r} leads out of the model's folder; only files "
            "in the model's folder are read"
        )
    path = base_dir / location
    try:
        real, root = os.path.realpath(path), os.path.realpath(base_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"external data location {location!r}: {exc}") from None
    if os.path.commonpath([real, root]) != root:
        raise InputError(
            f"external data location {location!r} is a link out of the model's folder; only "
            "files in the model's folder are read"
        )
    try:
        st = os.stat(real)
    except OSError:
        raise InputError(
            f"external data file {location!r} is missing", hint="keep it next to the model"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"external data location {location!r} is not a regular file")
    return path


#: Where an external tensor's bytes are: file (resolved), offset, length.
ExternalRef = FileSlice


def _entry_int(info: dict[str, str], key: str, tensor: TensorProto) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(
            f"tensor '{tensor.name}': external data {key} {info[key]!r} is not a byte count"
        )
    return value


def external_ref(tensor: TensorProto, base_dir: Path) -> ExternalRef:
    """The location of an EXTERNAL tensor's data, relative to the model's folder; InputError
    when the location is not a file in that folder or the offset/length do not fit it."""
    keys = [e.key for e in tensor.external_data]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise InputError(
            f"tensor '{tensor.name}': external data key '{twice[0]}' is given more than once"
        )
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    path = resolve_location(base_dir, location)
    offset = _entry_int(info, "offset", tensor) or 0
    length = _entry_int(info, "length", tensor)
    size = path.stat().st_size
    if length is None:
        length = max(size - offset, 0)
    if offset + length > size:
        raise InputError(
            f"external data file {location!r} is shorter than tensor '{tensor.name}' needs "
            f"({offset + length} bytes, the file has {size}; truncated copy?)"
        )
    return ExternalRef(path, offset, length)


def read_external(tensor: TensorProto, base_dir: Path) -> bytes:
    """The bytes of an EXTERNAL tensor, read from its file."""
    ref = external_ref(tensor, base_dir)
    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.length)
    if len(data) != ref.length:
        raise OSError(f"external data file {ref.path} is shorter than tensor '{tensor.name}' needs")
    return data
