"""The child process of ``bnfold.verify``: run two models on the same inputs, compare outputs.

    python -m bnfold._worker REQUEST.json RESULT.json

Runs in its own process so that a crash of onnxruntime (a segfault on a legal model) cannot take
bnfold down. RESULT.json holds {"status": "ok", ...} with the comparisons, "backend_error" when
the backend cannot run the models (the parent then tries the next backend), or "user_error" when
the request does not fit the models (bad --input-shape or --inputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.errors import BnfoldError, UsageError
from bnfold.inputs import (
    BFLOAT16,
    DEFAULT_DIM,
    LARGER_DIMS,
    MAX_TRIED_ELEMENTS,
    NUMPY_TYPES,
    InputSpec,
    has_unknown_dims,
    make_feeds,
    output_names,
    resolve_shapes,
)
from bnfold.verification import OutputComparison, compare_arrays, merge, tolerances_for

if TYPE_CHECKING:
    import onnx

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class BackendError(Exception):
    """The backend cannot load or run a model."""


# -- onnxruntime --------------------------------------------------------------------------------

#: onnxruntime's type strings -> ONNX element type numbers (see bnfold.inputs.NUMPY_TYPES).
_ORT_TYPES = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(string)": 8,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
    "tensor(bfloat16)": 16,
}


def open_session(
    path: str, *, level: str = "disable_all", threads: int | None = None
) -> tuple[Any, list[InputSpec], list[str]]:
    """An onnxruntime CPU session at optimization ``level`` ("disable_all" or "basic"), with the
    inputs it wants and its output names. Raises BackendError when onnxruntime refuses it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if level == "basic"
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every failure
        raise BackendError(first_line(exc)) from None
    return session, session_inputs(session), [o.name for o in session.get_outputs()]


def session_inputs(session: Any) -> list[InputSpec]:
    """What an onnxruntime session wants fed; BackendError for a type bnfold cannot make."""
    specs = []
    for i in session.get_inputs():
        if i.type not in _ORT_TYPES:
            raise BackendError(f"input '{i.name}' has type {i.type}, which bnfold cannot feed")
        shape = tuple(d if isinstance(d, int) else (d or None) for d in i.shape)
        specs.append(InputSpec(i.name, _ORT_TYPES[i.type], shape))
    return specs


def ort_model(path: str) -> tuple[list[InputSpec], list[str], Runner]:
    """An onnxruntime session at ORT_DISABLE_ALL: the comparison must see the model as written."""
    session, specs, outputs = open_session(path)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(session.run(None, feed))
        except Exception as exc:
            raise BackendError(first_line(exc)) from None

    return specs, outputs, run


# -- onnx.reference -----------------------------------------------------------------------------


def _low_precision(dtype: np.dtype[Any]) -> bool:
    """float16 and bfloat16: the dtypes whose arithmetic the reference evaluator must not do
    step by step (see ``_in_float32``)."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def _in_float32(base: Any, name: str, like: Sequence[int] = (0,)) -> type:
    """``base`` (a reference-evaluator op) computing float16/bfloat16 inputs in float32 and
    rounding each output once into its own type: output ``i`` has the type of input
    ``like[i]`` (the last entry for the outputs after it), as the operator's type constraints
    say, e.g. BatchNormalization-15's Y has X's type T, whatever the types of its parameters.

    numpy, and ml_dtypes for bfloat16, round after every elementwise step: the reference Conv
    rounds its product and again after adding the bias, Gemm after each of alpha, @, beta and
    +. Every real kernel accumulates in float32 and rounds the result once; the step-by-step
    rounding is noise of the evaluator, as large as the fold's own rounding and not in either
    model, so it would be compared as if it were a difference between them.
    """

    def _run(self: Any, *inputs: Any, **attrs: Any) -> tuple[Any, ...]:
        if not any(isinstance(x, np.ndarray) and _low_precision(x.dtype) for x in inputs):
            result: tuple[Any, ...] = base._run(self, *inputs, **attrs)
            return result
        up = [
            x.astype(np.float32) if isinstance(x, np.ndarray) and _low_precision(x.dtype) else x
            for x in inputs
        ]
        outputs = base._run(self, *up, **attrs)
        return tuple(_like(r, inputs, like[min(i, len(like) - 1)]) for i, r in enumerate(outputs))

    return type(name, (base,), {"op_domain": "", "_run": _run})


def _like(result: Any, inputs: Sequence[Any], source: int) -> Any:
    """``result`` (computed in float32) rounded into the type of ``inputs[source]``, when that
    input was a float16/bfloat16 one the computation widened."""
    model = inputs[source] if source < len(inputs) else None
    if not isinstance(result, np.ndarray) or not isinstance(model, np.ndarray):
        return result
    if result.dtype == np.float32 and _low_precision(model.dtype):
        return result.astype(model.dtype)
    return result


def _reference_ops(opset: int) -> list[type]:
    """bnfold's replacements for reference-evaluator ops at ``opset``: an inference-mode
    BatchNormalization, and the layers BatchNormalization folds into computed in float32 for
    float16/bfloat16."""
    from onnx.reference.ops.op_conv import Conv
    from onnx.reference.ops.op_conv_transpose import ConvTranspose
    from onnx.reference.ops.op_gemm import Gemm_6, Gemm_7
    from onnx.reference.ops.op_matmul import MatMul

    gemm = Gemm_6 if opset < 7 else Gemm_7
    layers = [(Conv, "Conv"), (ConvTranspose, "ConvTranspose"), (gemm, "Gemm")]
    return [
        # Y has X's type; the running mean and variance (training mode) have input_mean's
        _in_float32(_batchnorm_op(), "BatchNormalization", like=(0, 3)),
        *(_in_float32(base, name) for base, name in [*layers, (MatMul, "MatMul")]),
    ]


def _batchnorm_op() -> type:
    """BatchNormalization for the reference evaluator that honours inference mode.

    onnx 1.23's reference implementation for opsets 9-13 normalizes with batch statistics; a
    model in inference mode must use the running mean and variance it stores. It computes in
    the widest type of X and the parameters (BN-15 allows float64 X with float32 statistics:
    ``var + eps`` in float32 would be float32's rounding in a float64 model), and Y has X's type.
    """
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(  # type: ignore[no-untyped-def]
            self,
            x,
            scale,
            bias,
            mean,
            var,
            epsilon=None,
            momentum=None,
            spatial=None,
            is_test=None,
            training_mode=None,
            consumed_inputs=None,
        ):
            eps = 1e-5 if epsilon is None else epsilon
            training = bool(training_mode) or (is_test is not None and not is_test)
            axes = (0, *range(2, x.ndim))
            stored_mean, stored_var, out_type = mean, var, x.dtype
            wide = np.result_type(x, scale, bias, mean, var)
            x, scale, bias, mean, var = (
                a.astype(wide, copy=False) for a in (x, scale, bias, mean, var)
            )

            def per_channel(p: np.ndarray) -> np.ndarray:
                return np.reshape(p, (1, *p.shape) + (1,) * (x.ndim - 1 - p.ndim))

            if training:
                m, v = x.mean(axis=axes), x.var(axis=axes)
            else:
                m, v = mean, var
            y = (x - per_channel(m)) / np.sqrt(per_channel(v) + eps)
            y = (y * per_channel(scale) + per_channel(bias)).astype(out_type)
            if not training or len(self.output) == 1:
                return (y,)
            mom = 0.9 if momentum is None else momentum
            run_mean = (mean * mom + m * (1 - mom)).astype(stored_mean.dtype)
            run_var = (var * mom + v * (1 - mom)).astype(stored_var.dtype)
            return (y, run_mean, run_var)[: len(self.output)]

    return BatchNormalization


def _readable(model: onnx.ModelProto) -> None:
    """BackendError naming the first tensor whose element type ONNX does not define (the
    reference evaluator would fail on it with a bare KeyError)."""
    from bnfold.modelio import all_tensors
    from bnfold.proto import KNOWN_TYPES

    for tensor in all_tensors(model):
        if tensor.data_type not in KNOWN_TYPES:
            raise BackendError(
                f"tensor '{tensor.name}' has unknown element type {tensor.data_type}"
            )


def reference_model(path: str) -> tuple[list[InputSpec], list[str], Runner]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from bnfold.inputs import input_specs

    try:
        model = onnx.load(path)
        _readable(model)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        evaluator = ReferenceEvaluator(model, new_ops=_reference_ops(opset))
    except Exception as exc:  # the reference evaluator raises anything for unsupported models
        raise BackendError(first_line(exc)) from None
    outputs = output_names(model)
    specs = input_specs(model)
    for spec in specs:
        if spec.elem_type not in NUMPY_TYPES and spec.elem_type != BFLOAT16:
            raise BackendError(
                f"input '{spec.name}' has element type {spec.elem_type}, which bnfold cannot feed"
            )

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(r) for r in evaluator.run(None, feed)]
        except Exception as exc:
            raise BackendError(first_line(exc)) from None

    return specs, outputs, run


# -- the comparison -----------------------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 400 characters), for a report."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:400]


def _same_interface(
    a: Sequence[InputSpec], b: Sequence[InputSpec], oa: list[str], ob: list[str]
) -> None:
    da = {s.name: s.elem_type for s in a}
    db = {s.name: s.elem_type for s in b}
    if da != db:
        raise UsageError(
            f"the two models have different inputs: {sorted(da.items())} vs {sorted(db.items())}",
            hint="verify compares models with the same inputs and outputs",
        )
    if sorted(oa) != sorted(ob):
        raise UsageError(
            f"the two models have different outputs: {sorted(oa)} vs {sorted(ob)}",
            hint="verify compares models with the same inputs and outputs",
        )


def _compare_into(
    merged: dict[str, OutputComparison],
    outputs: Sequence[str],
    got_a: dict[str, np.ndarray],
    got_b: dict[str, np.ndarray],
    request: dict[str, Any],
) -> None:
    """Compare one sample's outputs and merge them into ``merged`` (the worst over samples)."""
    for name in outputs:
        a, b = np.asarray(got_a[name]), np.asarray(got_b[name])
        rtol, atol = tolerances_for(
            name, str(a.dtype), request["rtol"], request["atol"], request["output_tolerances"]
        )
        c = compare_arrays(name, a, b, rtol, atol)
        merged[name] = merge(merged[name], c) if name in merged else c


Feed = dict[str, np.ndarray]


@dataclass
class _Samples:
    """The samples to compare on, each with the original's outputs on it (computed as they are
    iterated, one sample in memory), the shapes they have, and notes on how they were chosen."""

    runs: Iterator[tuple[Feed, list[np.ndarray]]]
    shapes: dict[str, tuple[int, ...]]
    notes: list[str]
    enlarged: int | None = None  # the size unknown dims were run at, when not DEFAULT_DIM


def _run_original(run_a: Runner, feed: Feed, notes: Sequence[str]) -> list[np.ndarray]:
    """The original's outputs on ``feed``; a failure says which default shapes it ran at."""
    try:
        return run_a(feed)
    except BackendError as exc:
        if notes:
            raise BackendError(f"{exc} [{'; '.join(notes)}]") from None
        raise


def _runs(
    first: Feed, ran: list[np.ndarray], feeds: Iterator[Feed], run_a: Runner, notes: list[str]
) -> Iterator[tuple[Feed, list[np.ndarray]]]:
    yield first, ran
    del first, ran
    for feed in feeds:
        ran = _run_original(run_a, feed, notes)
        yield feed, ran
        del feed, ran  # one sample in memory: gone before the next is made


def _samples(specs: Sequence[InputSpec], run_a: Runner, request: dict[str, Any]) -> _Samples:
    """Make the samples and run the original on the first one.

    When the original does not run with unknown dimensions at ``DEFAULT_DIM`` (a detector whose
    feature maps must divide by 32 fails to broadcast at 16), larger sizes are tried in order
    (``LARGER_DIMS``), each a run of the original on one sample, until one runs; the samples are
    then made at that size. A model that runs at none fails as it did at the default.
    """
    started = time.monotonic()

    def make(
        dim: int, why: str = "default for unknown dims"
    ) -> tuple[Iterator[Feed], dict[str, tuple[int, ...]], list[str]]:
        return make_feeds(
            specs,
            input_shapes=request["input_shapes"] or None,
            inputs=request["inputs"],
            samples=request["samples"],
            seed=request["seed"],
            default_dim=dim,
            why=why,
        )

    feeds, shapes, notes = make(DEFAULT_DIM)
    first = next(feeds)
    try:
        ran = _run_original(run_a, first, notes)
    except BackendError as failure:
        del first
        if not _may_enlarge(specs, request):
            raise
        spent = time.monotonic() - started
        for dim, why in _larger_sizes(specs, request, failure, spent, started):
            feeds, shapes, notes = make(dim, why)
            first = next(feeds)
            try:
                ran = run_a(first)
            except BackendError:
                del first
                continue
            return _Samples(_runs(first, ran, feeds, run_a, notes), shapes, notes, dim)
        raise
    return _Samples(_runs(first, ran, feeds, run_a, notes), shapes, notes)


def _may_enlarge(specs: Sequence[InputSpec], request: dict[str, Any]) -> bool:
    """Larger sizes are tried in onnxruntime only (onnx.reference, slow at large sizes, runs
    after onnxruntime has failed at all of them), for random inputs with unknown dims."""
    return (
        request["backend"] == "onnxruntime"
        and request["inputs"] is None
        and has_unknown_dims(specs, request["input_shapes"] or None)
    )


def _larger_sizes(
    specs: Sequence[InputSpec],
    request: dict[str, Any],
    failure: BackendError,
    spent: float,
    started: float,
) -> Iterator[tuple[int, str]]:
    """The sizes to try after ``failure`` at DEFAULT_DIM (which took ``spent`` seconds), with
    the note's reason for each. Stops before a size whose inputs pass MAX_TRIED_ELEMENTS, or
    whose run, estimated from the last one's time by the inputs' size, would end past half the
    request's timeout (the rest is for the folded model and the comparison)."""
    timeout = request.get("timeout")
    given = request["input_shapes"] or None
    elements = _elements(resolve_shapes(specs, given, DEFAULT_DIM)[0])
    cause = str(failure).split(" [input ")[0]
    if len(cause) > 200:  # onnxruntime's messages say what went wrong at their end
        cause = f"{cause[:80]} ... {cause[-110:]}"
    for dim in LARGER_DIMS:
        bigger = _elements(resolve_shapes(specs, given, dim)[0])
        if bigger > MAX_TRIED_ELEMENTS:
            return
        now = time.monotonic()
        if timeout is not None and now - started + spent * bigger / max(elements, 1) > timeout / 2:
            return
        why = (
            f"the original model does not run with unknown dims at {DEFAULT_DIM} ({cause}); "
            f"{dim} is the first of {', '.join(map(str, LARGER_DIMS))} at which it runs"
        )
        yield dim, why
        spent, elements = time.monotonic() - now, bigger


def _elements(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    load = ort_model if request["backend"] == "onnxruntime" else reference_model
    specs, outputs, run_a = load(request["original"])
    specs_b, outputs_b, run_b = load(request["candidate"])
    _same_interface(specs, specs_b, outputs, outputs_b)
    samples = _samples(specs, run_a, request)
    merged: dict[str, OutputComparison] = {}
    for feed, ran in samples.runs:
        got_a = dict(zip(outputs, ran, strict=True))
        got_b = dict(zip(outputs_b, run_b(feed), strict=True))
        del feed, ran  # one sample in memory: this one goes before the next is made
        _compare_into(merged, outputs, got_a, got_b, request)
        del got_a, got_b
    result = {
        "status": "ok",
        "backend": request["backend"],
        "outputs": [asdict(merged[n]) for n in outputs],
        "input_shapes": {k: list(v) for k, v in samples.shapes.items()},
        "notes": samples.notes,
    }
    if samples.enlarged is not None:
        result["enlarged"] = samples.enlarged
    return result


def main(argv: Sequence[str]) -> int:
    return serve(argv, run_request)


#: The exit code when the result cannot be written (bnfold.verification.EXIT_NO_RESULT).
EXIT_NO_RESULT = 75


def serve(argv: Sequence[str], handle: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Read the JSON request at argv[0], answer it with ``handle`` into the JSON file at argv[1];
    what goes wrong becomes the answer (backend_error / user_error), never a traceback.

    A result that cannot be written (a full disk) is said in one line on stderr, exit 75. Once
    the request is read, a watcher thread ends this process when the parent dies (see
    ``watch_parent``).
    """
    request_path, result_path = argv
    try:
        request = json.loads(Path(request_path).read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the request {request_path}: {first_line(exc)}", file=sys.stderr)
        return 2
    if request.get("parent_fd") is not None:
        cleanup = [Path(request_path).parent, *map(Path, request.get("cleanup") or ())]
        watch_parent(int(request["parent_fd"]), cleanup)
    try:
        result = handle(request)
    except BackendError as exc:
        result = {"status": "backend_error", "message": str(exc)}
    except BnfoldError as exc:
        result = {
            "status": "user_error",
            "type": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
        }
    except Exception as exc:  # a bug or an unexpected failure: report it, do not hide it
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result = {
            "status": "backend_error",
            "message": f"{type(exc).__name__}: {first_line(exc)} ({tb})",
        }
    try:
        Path(result_path).write_text(json.dumps(result))
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(result_path).unlink()  # no half-written result for the parent to misread
        print(exc.strerror or first_line(exc), file=sys.stderr)
        return EXIT_NO_RESULT
    return 0


def watch_parent(fd: int, cleanup: Sequence[Path]) -> None:
    """Exit this process, removing the folders in ``cleanup``, once the parent has died.

    ``fd`` is the read end of a pipe whose write end only the parent holds, so reading it
    blocks until the parent closes it or dies, however it dies (SIGKILL too). The read runs in a
    daemon thread; onnxruntime and numpy release the GIL while they compute, so it gets to run.
    """

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=wait, name="bnfold-parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
