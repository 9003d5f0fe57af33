"""Where the bytes of a model's weights are while bnfold has it open: the one place that knows.

bnfold does not load the weights it does not fold. The main graph's initializers that matter for
memory are kept in the model as *headers* (name, type, dims, doc string; no data), and their
bytes have a source in the model's ``TensorStore``:

- a slice of a file: the large ``raw_data`` of a tensor inline in the model file (the reader
  skips it, ``bnfold.model.wire``) or the tensor's bytes in an external data file; read through a
  read-only memory map when a fold needs them, copied file to file when it does not;
- an array: the values a fold computed, held until the writer puts them in the output;
- a lazy fold (``numerics.LazyScaled``): a large folded weight, computed again chunk by chunk
  as the writer writes it, so that it never is in memory whole.

``bnfold.model.writer`` lays each header out with its source's bytes, inline or in the output's data
file, so at most the folded tensors are ever in memory, never a serialized copy of the model.
A model with no store (an in-memory ``ModelProto`` given to the API) keeps its data in the
protos, as usual. Tensors outside the main graph (subgraphs, functions, attributes) are parsed
as usual; their external data, if any, is read where the proto says.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from bnfold.errors import InputError
from bnfold.model import proto
from bnfold.model.proto import TensorProto, storable
from bnfold.numerics.arith import LazyScaled


@dataclass(frozen=True)
class FileSlice:
    """Bytes [offset, offset + length) of a file: inline in the model file, or external data."""

    path: Path
    offset: int
    length: int


Source: TypeAlias = FileSlice | npt.NDArray[Any] | LazyScaled


class TensorStore:
    """The sources of the main graph's header initializers, by name (unique in a graph)."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def __len__(self) -> int:
        return len(self._sources)

    def names(self) -> Iterator[str]:
        return iter(self._sources)

    def source(self, name: str) -> Source | None:
        return self._sources.get(name)

    def slices(self) -> Iterator[tuple[str, FileSlice]]:
        for name, source in self._sources.items():
            if isinstance(source, FileSlice):
                yield name, source

    def put_file(self, name: str, where: FileSlice) -> None:
        self._sources[name] = where

    def hold(
        self, tensor: TensorProto, values: npt.NDArray[Any] | LazyScaled, elem_type: int
    ) -> None:
        """Make ``tensor`` a header whose values are ``values`` (contiguous, little-endian: see
        ``numerics.storable``), held here until the model is written."""
        proto.reset_data(tensor, tuple(values.shape), elem_type)
        self._sources[tensor.name] = values

    @staticmethod
    def nbytes(source: Source) -> int:
        return source.length if isinstance(source, FileSlice) else int(source.nbytes)

    @staticmethod
    def chunks(source: npt.NDArray[Any] | LazyScaled) -> Iterator[memoryview]:
        """The bytes of a held array or lazy fold, as the file holds them, a chunk at a time."""
        if not isinstance(source, LazyScaled):  # held arrays are stored storable already
            yield source.reshape(-1).view(np.uint8).data
            return
        for part in source.chunks():
            yield storable(part, source.elem_type).reshape(-1).view(np.uint8).data

    def array(self, tensor: TensorProto) -> npt.NDArray[Any]:
        """The values of header ``tensor``: a held array, or a read-only view of its file slice
        (no copy) where numpy can read the bytes as they are."""
        source = self._sources[tensor.name]
        if isinstance(source, LazyScaled):
            return source.materialize()  # a fold that reads it again: whole, for that fold only
        if not isinstance(source, FileSlice):
            return source
        dims = tuple(int(d) for d in tensor.dims)
        dtype = proto.raw_dtype(tensor.data_type)
        try:
            if dtype is not None and source.length == dtype.itemsize * int(np.prod(dims)):
                mapped = self._mapped(source.path)
                if source.offset + source.length > len(mapped):
                    raise OSError(f"{source.path} is shorter than tensor '{tensor.name}' needs")
                count = source.length // dtype.itemsize
                view = np.frombuffer(mapped, dtype=dtype, count=count, offset=source.offset)
                return view.reshape(dims)
            with open(source.path, "rb") as f:
                f.seek(source.offset)
                raw = f.read(source.length)
            if len(raw) != source.length:
                raise OSError(f"{source.path} is shorter than tensor '{tensor.name}' needs")
        except (OSError, ValueError) as exc:
            raise InputError(f"tensor '{tensor.name}': cannot read its data ({exc})") from None
        loaded = TensorProto()
        loaded.data_type = tensor.data_type
        loaded.dims.extend(dims)
        loaded.raw_data = raw
        return proto.to_array(loaded)

    def _mapped(self, path: Path) -> mmap.mmap:
        found = self._maps.get(path)
        if found is None:
            with open(path, "rb") as f:
                found = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = found
        return found

    def release_pages(self) -> None:
        """Tell the OS it may drop the mapped pages read so far (they are folded: not needed
        again); the maps stay valid and fault pages back in if read."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None:  # pragma: no cover - not on Linux
            return
        for mapped in self._maps.values():
            with contextlib.suppress(OSError, ValueError):
                mapped.madvise(advice)

    def close(self) -> None:
        """Unmap the files (views of them must be gone by then: numpy keeps the map alive)."""
        for mapped in self._maps.values():
            with contextlib.suppress(BufferError):  # a view is still alive: left to the GC
                mapped.close()
        self._maps.clear()
