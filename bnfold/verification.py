"""Prove that two models compute the same thing: run both on the same inputs and compare outputs.

Both models run in one child process (``python -m bnfold._worker``) in onnxruntime at
ORT_DISABLE_ALL: at any other level onnxruntime folds Conv+BatchNormalization itself and the
comparison would prove nothing. A crash of onnxruntime kills only the child. Where onnxruntime
cannot run the models, both run in ``onnx.reference`` instead; where nothing can run them the
result is "unverified" with the reason. This process never imports onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bnfold.errors import InputError, OutputError, UsageError

if TYPE_CHECKING:
    import onnx

Status = Literal["passed", "failed", "unverified"]

#: Default (rtol, atol) by output element type. An element passes when
#: |folded - original| <= atol * scale + rtol * |original|, with scale = max(1, max |original|):
#: float rounding in a deep network grows with the magnitude of the values it computes, so the
#: absolute part is measured against the output's own range (for outputs within [-1, 1] this is
#: exactly numpy's allclose).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
    "float64": (1e-7, 1e-9),
}
#: Integer, bool and other non-float outputs must be equal.
EXACT = (0.0, 0.0)

BACKENDS = ("onnxruntime", "onnx.reference")


def default_tolerance(dtype: str) -> tuple[float, float]:
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class OutputComparison:
    """How far one output of the candidate is from the original's, over all samples.

    ``min_atol`` is the smallest atol that would have passed at this rtol; ``min_rtol`` the
    smallest rtol at this atol (inf when none can: the original is 0 where they differ).
    ``scale`` = max(1, max |original|) multiplies atol. ``error_ratio`` is the worst
    |difference| / (atol*scale + rtol*|original|): above 1 fails.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    rtol: float
    atol: float
    min_atol: float
    min_rtol: float
    error_ratio: float
    scale: float
    mismatched: int
    size: int
    passed: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; non-finite numbers (an impossible min_rtol, NaN errors) become null."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "max_abs": _finite_or_none(self.max_abs),
            "max_rel": _finite_or_none(self.max_rel),
            "mean_abs": _finite_or_none(self.mean_abs),
            "rtol": self.rtol,
            "atol": self.atol,
            "min_atol": _finite_or_none(self.min_atol),
            "min_rtol": _finite_or_none(self.min_rtol),
            "error_ratio": _finite_or_none(self.error_ratio),
            "scale": _finite_or_none(self.scale),
            "mismatched": self.mismatched,
            "size": self.size,
            "passed": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on a pair of models, with per-output numbers and how they were obtained."""

    status: Status
    backend: str | None
    outputs: tuple[OutputComparison, ...]
    samples: int
    seed: int
    input_shapes: dict[str, list[int]]
    reason: str | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    #: The size unknown dims were run at when the original did not run at the default (the
    #: shapes are in ``input_shapes``, the why in ``notes``; not a key of its own in the JSON)
    enlarged: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def worst(self, n: int = 3) -> list[OutputComparison]:
        """The ``n`` outputs furthest over (or closest to) their tolerance."""
        return sorted(self.outputs, key=lambda o: (o.passed, -_sortable(o.error_ratio)))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "backend": self.backend,
            "reason": self.reason,
            "samples": self.samples,
            "seed": self.seed,
            "input_shapes": self.input_shapes,
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x


# -- comparison (runs in the worker) ------------------------------------------------------------


def dtype_name(array: np.ndarray) -> str:
    return str(array.dtype)


def is_float(dtype: np.dtype[Any]) -> bool:
    """True for numpy's floats and complex numbers and ml_dtypes' (bfloat16, float8...), whose
    numpy kind is "V": they get the float tolerances and the output-range scale, not equality."""
    return dtype.kind in "fc" or (dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")))


def compare_arrays(
    name: str, original: np.ndarray, candidate: np.ndarray, rtol: float, atol: float
) -> OutputComparison:
    """Elementwise ``allclose`` (NaNs must match) with the numbers a person needs to judge it."""
    dtype = dtype_name(original)
    shape = tuple(int(d) for d in original.shape)

    def failed(note: str) -> OutputComparison:
        inf = math.inf
        return OutputComparison(
            name, dtype, shape, inf, inf, inf, rtol, atol, inf, inf, inf, 1.0, original.size,
            original.size, False, note,
        )  # fmt: skip

    if candidate.dtype != original.dtype:
        return failed(f"dtype differs: {dtype_name(candidate)} vs {dtype}")
    if candidate.shape != original.shape:
        return failed(f"shape differs: {list(candidate.shape)} vs {list(shape)}")
    if original.dtype.kind in "OSU":
        bad = int(np.count_nonzero(original != candidate))
        return OutputComparison(
            name, dtype, shape, float(bad > 0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(bad > 0),
            1.0, bad, original.size, bad == 0,
        )  # fmt: skip
    ref = original.astype(np.float64)
    got = candidate.astype(np.float64)
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    same = (ref == got) | (nan_ref & nan_got)  # also equal infinities
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - ref))
    diff = np.where(nan_ref ^ nan_got, np.inf, diff)
    mag = np.abs(np.where(nan_ref, 0.0, ref))
    finite = mag[np.isfinite(mag)]
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    if not is_float(original.dtype):
        scale = 1.0  # integers and bools: exact
    allowed = atol * scale + rtol * mag
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
        rel = np.where(diff == 0, 0.0, diff / mag)
        need_rtol = np.where(diff <= atol * scale, 0.0, (diff - atol * scale) / mag)
    size = int(original.size)
    mismatched = int(np.count_nonzero(diff > allowed))
    return OutputComparison(
        name=name,
        dtype=dtype,
        shape=shape,
        max_abs=float(diff.max()) if size else 0.0,
        max_rel=float(rel.max()) if size else 0.0,
        mean_abs=float(diff.mean()) if size else 0.0,
        rtol=rtol,
        atol=atol,
        min_atol=float(np.max(np.maximum(diff - rtol * mag, 0.0))) / scale if size else 0.0,
        min_rtol=float(need_rtol.max()) if size else 0.0,
        error_ratio=float(ratio.max()) if size else 0.0,
        scale=scale,
        mismatched=mismatched,
        size=size,
        passed=mismatched == 0,
    )


def merge(a: OutputComparison, b: OutputComparison) -> OutputComparison:
    """The worst of two samples' comparisons of the same output."""
    return OutputComparison(
        name=a.name,
        dtype=a.dtype,
        shape=a.shape,
        max_abs=max(a.max_abs, b.max_abs),
        max_rel=max(a.max_rel, b.max_rel),
        mean_abs=max(a.mean_abs, b.mean_abs),
        rtol=a.rtol,
        atol=a.atol,
        min_atol=max(a.min_atol, b.min_atol),
        min_rtol=max(a.min_rtol, b.min_rtol),
        error_ratio=max(a.error_ratio, b.error_ratio),
        scale=max(a.scale, b.scale),
        mismatched=a.mismatched + b.mismatched,
        size=a.size + b.size,
        passed=a.passed and b.passed,
        note=a.note or b.note,
    )


def tolerances_for(
    name: str,
    dtype: str,
    rtol: float | None,
    atol: float | None,
    per_output: Mapping[str, Sequence[float | None]] | None,
) -> tuple[float, float]:
    """Per-output override, else the global option, else the dtype default."""
    d_rtol, d_atol = default_tolerance(dtype)
    o_rtol, o_atol = (per_output or {}).get(name, (None, None))
    r = o_rtol if o_rtol is not None else rtol if rtol is not None else d_rtol
    a = o_atol if o_atol is not None else atol if atol is not None else d_atol
    return float(r), float(a)


# -- the parent side ----------------------------------------------------------------------------


def verify(
    original: onnx.ModelProto | str | os.PathLike[str],
    folded: onnx.ModelProto | str | os.PathLike[str],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    samples: int = 1,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    output_tolerances: Mapping[str, tuple[float | None, float | None]] | None = None,
    timeout: float | None = 600.0,
    scratch_dir: str | os.PathLike[str] | None = None,
    cleanup: Sequence[str | os.PathLike[str]] = (),
) -> VerifyReport:
    """Run ``original`` and ``folded`` on the same inputs and compare every output.

    Paths are preferred (no re-serialization; external data is found beside the file). Inputs are
    seeded random data (see ``bnfold.inputs``) or the arrays in the ``inputs`` .npz. Raises
    ``UsageError`` when the models' inputs/outputs differ or the input options do not fit them,
    ``OutputError`` when the temporary folder cannot be written; everything that goes wrong while
    running them is reported, not raised.

    The temporary work folder is made in ``scratch_dir`` (default: TMPDIR). Should this process
    die, the child removes its work folder and the folders in ``cleanup`` (fold_file's staging
    folder) and exits.
    """
    limit = check_options(
        samples=samples, rtol=rtol, atol=atol, output_tolerances=output_tolerances, timeout=timeout
    )
    if inputs is not None:
        from bnfold.inputs import read_npz

        read_npz(inputs)  # here, before any child: a bad file is a usage error, not "unverified"
    start = time.perf_counter()
    with _work_folder("bnfold-verify-", scratch_dir) as work:
        request = {
            "original": str(_as_path(original, work / "original.onnx", work)),
            "candidate": str(_as_path(folded, work / "candidate.onnx", work)),
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "inputs": str(inputs) if inputs is not None else None,
            "samples": samples,
            "seed": seed,
            "rtol": rtol,
            "atol": atol,
            "output_tolerances": {k: list(v) for k, v in (output_tolerances or {}).items()},
            "cleanup": [str(p) for p in cleanup],
            "timeout": limit,
        }
        notes: list[str] = []
        failures: list[str] = []
        for backend in BACKENDS:
            result = _run_worker({**request, "backend": backend}, work, limit)
            kind = result["status"]
            if kind == "ok":
                return _report(result, samples, seed, notes, time.perf_counter() - start)
            if kind == "user_error":
                error = UsageError if result.get("type") == "UsageError" else InputError
                raise error(result["message"], hint=result.get("hint"))
            failures.append(f"{backend}: {result['message']}")
            if backend == BACKENDS[0]:
                notes.append(f"onnxruntime could not run the models ({result['message']})")
            if kind == "timeout":
                break
    return VerifyReport(
        status="unverified",
        backend=None,
        outputs=(),
        samples=samples,
        seed=seed,
        input_shapes={},
        reason="; ".join(failures),
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
    )


def check_options(
    *,
    samples: int = 1,
    rtol: float | None = None,
    atol: float | None = None,
    output_tolerances: Mapping[str, Sequence[float | None]] | None = None,
    timeout: float | None = None,
) -> float | None:
    """Refuse (``UsageError``) option values no verification can use; returns the timeout to
    apply: None (no limit) for None or inf, else seconds, which must be > 0 (NaN is refused)."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise UsageError(f"samples must be a whole number >= 1, not {samples!r}")
    if output_tolerances:
        for name, tol in output_tolerances.items():
            if any(t is not None and (t < 0 or not math.isfinite(t)) for t in tol):
                raise UsageError(f"tolerances for output '{name}' must be finite and >= 0")
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and (value < 0 or not math.isfinite(value)):
            raise UsageError(f"{label} must be a finite number >= 0, not {value!r}")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise UsageError(f"timeout must be a number of seconds, not {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise UsageError(
            f"timeout must be a number of seconds > 0, not {timeout!r}",
            hint="inf means no limit",
        )
    return None if math.isinf(timeout) else float(timeout)


@contextlib.contextmanager
def _work_folder(prefix: str, scratch_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    """A temporary folder in ``scratch_dir`` (default TMPDIR), removed on exit."""
    try:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=scratch_dir)
    except OSError as exc:
        where = scratch_dir if scratch_dir is not None else tempfile.gettempdir()
        raise temp_folder_error(Path(where), exc) from None
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_folder_error(folder: Path, exc: OSError | str) -> OutputError:
    """The one-line error for a temporary folder that cannot be written (full, read-only)."""
    reason = exc if isinstance(exc, str) else exc.strerror or str(exc)
    if folder.name.startswith(".bnfold-"):  # fold_file's staging folder: name the output's
        folder = folder.parent
    in_tmpdir = folder == Path(tempfile.gettempdir())
    return OutputError(
        f"cannot write the temporary folder in {folder} ({reason})",
        hint="free space there" + (", or set TMPDIR to another folder" if in_tmpdir else ""),
    )


def _as_path(model: onnx.ModelProto | str | os.PathLike[str], spill: Path, work: Path) -> Path:
    from bnfold.proto import ModelProto

    if isinstance(model, ModelProto):
        import onnx  # only to spill an in-memory model (onnx's import costs ~1 s)

        large = model.ByteSize() > 2**31 - 1
        try:
            onnx.save_model(
                model,
                str(spill),
                save_as_external_data=large,
                all_tensors_to_one_file=True,
                location=spill.name + ".data",
            )
        except OSError as exc:
            raise temp_folder_error(work.parent, exc) from None
        return spill
    path = Path(model)
    if not path.is_file():
        raise InputError(f"{path}: no such file", hint="check the path")
    # Before onnxruntime reads it: a model file is untrusted input, and its external data must be
    # files in its own folder, of the sizes its tensors say (~15 ms for a 100 MB model: the
    # weights are not read).
    from bnfold.modelio import open_model_file

    open_model_file(path)
    return path


def _run_worker(request: dict[str, Any], work: Path, timeout: float | None) -> dict[str, Any]:
    return run_child("bnfold._worker", request, work, timeout, tag=request["backend"])


#: The exit code of a child that could not write its result (EX_TEMPFAIL of sysexits.h).
EXIT_NO_RESULT = 75


def run_child(
    module: str, request: dict[str, Any], work: Path, timeout: float | None, *, tag: str = ""
) -> dict[str, Any]:
    """Run ``python -m module REQUEST RESULT`` on a JSON request; a crash or timeout of the child
    becomes a result ({"status": "crash" | "timeout", "message": ...}), not an error here.

    The child gets the read end of a pipe whose write end only this process holds: when this
    process dies, however (SIGKILL included), the child sees end-of-file, removes ``work`` and
    the request's "cleanup" folders, and exits (see ``bnfold._worker.serve``). Its TMPDIR is
    ``work``, so whatever onnxruntime leaves there goes too. A request or result that cannot be
    written in ``work`` is an ``OutputError``.
    """
    req = work / f"request-{tag}.json"
    res = work / f"result-{tag}.json"
    if timeout is not None and math.isinf(timeout):
        timeout = None
    read_end, write_end = os.pipe()
    try:
        try:
            req.write_text(json.dumps({**request, "parent_fd": read_end}))
        except OSError as exc:
            raise temp_folder_error(work.parent, exc) from None
        env = {**os.environ, "TMPDIR": str(work), "TMP": str(work), "TEMP": str(work)}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", module, str(req), str(res)],
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=(read_end,),
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "message": f"timed out after {timeout:g} s (--timeout)"}
    finally:
        os.close(read_end)
        os.close(write_end)
    last = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    if proc.returncode == EXIT_NO_RESULT:
        raise temp_folder_error(work.parent, last or "the result could not be written")
    try:
        result = json.loads(res.read_text())
        if isinstance(result, dict) and isinstance(result.get("status"), str):
            return result
        last = "its result is not a result document"
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:  # truncated or unreadable: the child did not finish it
        last = f"its result cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    if proc.returncode < 0:
        how = f"crashed with signal {-proc.returncode}"
    else:
        how = f"exited with code {proc.returncode}"
    return {
        "status": "crash",
        "message": f"the process running it {how}" + (f": {last}" if last else ""),
    }


def _report(
    result: dict[str, Any], samples: int, seed: int, notes: list[str], seconds: float
) -> VerifyReport:
    outputs = tuple(
        OutputComparison(**{**o, "shape": tuple(o["shape"])}) for o in result["outputs"]
    )
    passed = all(o.passed for o in outputs)
    reason = None
    if not passed:
        bad = [o for o in outputs if not o.passed]
        reason = f"{len(bad)} of {len(outputs)} outputs differ beyond tolerance: " + ", ".join(
            f"'{o.name}'" for o in bad
        )
    return VerifyReport(
        status="passed" if passed else "failed",
        backend=result["backend"],
        outputs=outputs,
        samples=samples,
        seed=seed,
        input_shapes={k: list(v) for k, v in result["input_shapes"].items()},
        reason=reason,
        notes=tuple(notes + result.get("notes", [])),
        seconds=seconds,
        enlarged=result.get("enlarged"),
    )
