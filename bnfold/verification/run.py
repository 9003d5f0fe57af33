"""Prove that two models compute the same thing: run both on the same inputs and compare outputs.

Both models run in one child process (``python -m bnfold.verification.worker``) in onnxruntime at
ORT_DISABLE_ALL: at any other level onnxruntime folds Conv+BatchNormalization itself and the
comparison would prove nothing. A crash of onnxruntime kills only the child. Where onnxruntime
cannot run the models, both run in ``onnx.reference`` instead; where nothing can run them the
result is "unverified" with the reason. This process never imports onnxruntime.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfold.errors import InputError, UsageError
from bnfold.runtime.child import run_child, temp_folder_error, work_folder
from bnfold.verification.report import DEFAULT_TIMEOUT, OutputComparison, VerifyReport

if TYPE_CHECKING:
    import onnx


BACKENDS = ("onnxruntime", "onnx.reference")


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
    timeout: float | None = DEFAULT_TIMEOUT,
    scratch_dir: str | os.PathLike[str] | None = None,
    cleanup: Sequence[str | os.PathLike[str]] = (),
) -> VerifyReport:
    """Run ``original`` and ``folded`` on the same inputs and compare every output.

    Paths are preferred (no re-serialization; external data is found beside the file). Inputs are
    seeded random data (see ``bnfold.runtime.inputs``) or the arrays in the ``inputs`` .npz. Raises
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
        from bnfold.runtime.inputs import read_npz

        read_npz(inputs)  # here, before any child: a bad file is a usage error, not "unverified"
    start = time.perf_counter()
    with work_folder("bnfold-verify-", scratch_dir) as work:
        shapeless: list[str] = []  # inputs that declare no shape, filled by _as_path
        request = {
            "original": str(_as_path(original, work / "original.onnx", work, shapeless)),
            "candidate": str(_as_path(folded, work / "candidate.onnx", work, shapeless)),
            "shapeless": shapeless,
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


def _as_path(
    model: onnx.ModelProto | str | os.PathLike[str], spill: Path, work: Path, shapeless: list[str]
) -> Path:
    """The model as a file the child can read (a ModelProto is saved into ``work``); the names
    of its inputs that declare no shape are added to ``shapeless``."""
    from bnfold.model.proto import ModelProto
    from bnfold.model.reading import open_model_file, shapeless_inputs

    if isinstance(model, ModelProto):
        shapeless.extend(n for n in shapeless_inputs(model) if n not in shapeless)
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
    opened = open_model_file(path)
    shapeless.extend(n for n in shapeless_inputs(opened.model) if n not in shapeless)
    return path


def _run_worker(request: dict[str, Any], work: Path, timeout: float | None) -> dict[str, Any]:
    return run_child("bnfold.verification.worker", request, work, timeout, tag=request["backend"])


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
        backend_version=result.get("backend_version"),
        providers=tuple(result.get("providers", ())),
    )
