"""Input data for running models: seeded, dtype-aware random arrays, or the user's own ``.npz``.

Only real graph inputs are fed (an initializer listed as a graph input keeps its stored default).
Symbolic or unknown dimensions come from ``input_shapes`` or, by default, are 1 on the first axis
(the batch) and 16 elsewhere; one symbolic name gets one value across all inputs. When the
original model does not run so, verification tries larger sizes (``LARGER_DIMS``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bnfold.errors import UsageError

if TYPE_CHECKING:
    import onnx

# ONNX element types by their numbers (fixed by the ONNX spec), so that the verification child
# process need not import onnx at all.
BOOL, STRING, BFLOAT16 = 9, 8, 16
#: numpy dtypes of the ONNX element types bnfold can feed (bfloat16 comes from ml_dtypes).
NUMPY_TYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "object",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
}


def numpy_dtype(elem_type: int) -> np.dtype[np.generic]:
    """The numpy dtype that holds ONNX element type ``elem_type``."""
    if elem_type == BFLOAT16:
        import ml_dtypes

        bfloat16: np.dtype[np.generic] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    if elem_type not in NUMPY_TYPES:
        raise UsageError(f"bnfold cannot make input data of ONNX element type {elem_type}")
    return np.dtype(NUMPY_TYPES[elem_type])


#: Default for an unknown dimension on axis 0 (the batch) and on every other axis.
DEFAULT_BATCH = 1
DEFAULT_DIM = 16
#: Sizes tried, in order, for unknown non-batch dimensions when the original model does not run
#: with DEFAULT_DIM (a detector whose feature maps must divide by 32, say).
LARGER_DIMS = (32, 64, 128, 224)
#: No larger size is tried whose inputs together would pass this many elements.
MAX_TRIED_ELEMENTS = 1 << 24

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A graph input as declared: name, ONNX element type and (possibly symbolic) shape."""

    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None  # None: rank unknown

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return numpy_dtype(self.elem_type)

    def declared(self) -> str:
        if self.shape is None:
            return "unknown shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape: tuple[Dim, ...] | None = None
        if t.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim
            )
        specs.append(InputSpec(vi.name, t.elem_type, shape))
    return specs


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"image:1x3x224x224"`` -> ``("image", (1, 3, 224, 224))``; names may contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split("x")) if dims.strip() else ()
    except ValueError:
        shape = (-1,)
    if not sep or not name or any(d < 0 for d in shape):
        raise UsageError(
            f"--input-shape '{text}': expected NAME:DIMS with DIMS like 1x3x224x224",
            hint="use 'NAME:' for a scalar input",
        )
    return name, shape


def resolve_shapes(
    specs: Sequence[InputSpec],
    input_shapes: Mapping[str, Sequence[int]] | None,
    default_dim: int = DEFAULT_DIM,
    why: str = "default for unknown dims",
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for every input, and notes on which defaults were applied
    (``default_dim`` for unknown dimensions past the batch axis; ``why`` says why in the
    notes)."""
    given = dict(input_shapes or {})
    known = {s.name for s in specs}
    for name in given:
        if name not in known:
            raise UsageError(
                f"--input-shape names '{name}', which is not an input of the model",
                hint=f"its inputs are: {', '.join(sorted(known)) or 'none'}",
            )
    symbols: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:  # the user's shapes first, so they fix the symbols they contain
        if spec.name in given:
            shapes[spec.name] = _check_given(spec, tuple(int(d) for d in given[spec.name]))
            for d, v in zip(spec.shape or (), shapes[spec.name], strict=False):
                if isinstance(d, str):
                    symbols.setdefault(d, v)
    notes = []
    for spec in specs:
        if spec.name in shapes:
            continue
        if spec.shape is None:
            raise UsageError(
                f"input '{spec.name}' has no declared shape",
                hint=f"pass --input-shape {spec.name}:DIMS",
            )
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
                continue
            value = symbols.get(d) if isinstance(d, str) else None
            if value is None:
                value = DEFAULT_BATCH if axis == 0 else default_dim
                if isinstance(d, str):
                    symbols[d] = value
            dims.append(value)
        shapes[spec.name] = tuple(dims)
        if any(not isinstance(d, int) for d in spec.shape):
            notes.append(
                f"input '{spec.name}' {spec.declared()} run as "
                f"{'x'.join(map(str, dims)) or 'scalar'} ({why}; "
                f"set --input-shape {spec.name}:DIMS)"
            )
    return shapes, notes


def has_unknown_dims(
    specs: Sequence[InputSpec], input_shapes: Mapping[str, Sequence[int]] | None
) -> bool:
    """True when some input not given a shape has an unknown dimension past the batch axis:
    the inputs ``resolve_shapes`` makes then depend on its ``default_dim``."""
    given = input_shapes or {}
    return any(
        spec.name not in given
        and spec.shape is not None
        and any(not isinstance(d, int) for d in spec.shape[1:])
        for spec in specs
    )


def _check_given(spec: InputSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.shape is None:
        return shape
    fits = len(shape) == len(spec.shape) and all(
        not isinstance(d, int) or d == v for d, v in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise UsageError(
            f"--input-shape {spec.name}:{'x'.join(map(str, shape))} does not fit input "
            f"'{spec.name}', declared {spec.declared()}"
        )
    return shape


def random_array(rng: np.random.Generator, elem_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded data of the input's type: floats N(0, 1), integers in [0, 10), random booleans."""
    if elem_type == BOOL:
        return rng.random(shape) < 0.5
    if elem_type == BFLOAT16:
        import ml_dtypes

        return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    if elem_type == STRING:
        return rng.integers(0, 10, shape).astype(str).astype(object)
    dtype = numpy_dtype(elem_type)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


def make_feeds(
    specs: Sequence[InputSpec],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    samples: int = 1,
    seed: int = 0,
    default_dim: int = DEFAULT_DIM,
    why: str = "default for unknown dims",
) -> tuple[Iterator[dict[str, np.ndarray]], dict[str, tuple[int, ...]], list[str]]:
    """Feeds for ``samples`` runs, the shapes used, and notes on defaults (``default_dim`` for
    unknown dimensions past the batch axis, ``why`` as for ``resolve_shapes``).

    The feeds are made one at a time as they are iterated (same random stream, in the same
    order, as making them all at once), so memory holds one sample however many are asked for;
    shapes are checked before this returns. With ``inputs`` (an .npz keyed by input name) the
    user's arrays are the one sample.
    """
    if inputs is not None:
        feed = load_npz(specs, Path(inputs))
        return iter([feed]), {k: tuple(v.shape) for k, v in feed.items()}, []
    shapes, notes = resolve_shapes(specs, input_shapes, default_dim, why)
    return _random_feeds(specs, shapes, samples, seed), shapes, notes


def _random_feeds(
    specs: Sequence[InputSpec], shapes: dict[str, tuple[int, ...]], samples: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        # yielded unnamed: the generator keeps no reference to a sample once it is handed out
        yield {s.name: random_array(rng, s.elem_type, shapes[s.name]) for s in specs}


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``; ``UsageError`` when it is not a readable .npz.

    The file is opened without blocking and must be a regular file, so a FIFO or a device
    named by mistake is refused instead of waited on. All arrays are read, so a truncated or
    corrupt archive (bad CRC) is found here, not when a model runs on it.
    """
    hint = "expected an .npz of arrays keyed by input name, as numpy.savez writes"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UsageError(f"{path}: cannot open it ({exc.strerror or exc})", hint=hint) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: not a regular file", hint=hint)
    with open(fd, "rb") as file:
        try:
            data = np.load(file, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single array (.npy), not an .npz archive")
            with data:
                return {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile, numpy and the OS raise many kinds for a bad file
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            why = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise UsageError(f"{path}: cannot read it as .npz ({why})", hint=hint) from None


def load_npz(specs: Sequence[InputSpec], path: Path) -> dict[str, np.ndarray]:
    """The user's arrays, checked against the model's inputs (names, dtypes, fixed dims)."""
    arrays = read_npz(path)
    names = {s.name for s in specs}
    missing = sorted(names - arrays.keys())
    extra = sorted(arrays.keys() - names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise UsageError(
            f"--inputs {path}: arrays do not match the model's inputs ({'; '.join(parts)})",
            hint=f"the model's inputs are: {', '.join(sorted(names))}",
        )
    for spec in specs:
        arr = arrays[spec.name]
        if spec.elem_type != BFLOAT16 and arr.dtype != spec.dtype:
            raise UsageError(
                f"--inputs {path}: '{spec.name}' is {arr.dtype}, the model wants {spec.dtype}"
            )
        if spec.shape is not None and (
            arr.ndim != len(spec.shape)
            or any(
                isinstance(d, int) and d != v for d, v in zip(spec.shape, arr.shape, strict=True)
            )
        ):
            raise UsageError(
                f"--inputs {path}: '{spec.name}' has shape {list(arr.shape)}, "
                f"the model declares {spec.declared()}"
            )
    return arrays
