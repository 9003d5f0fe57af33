"""The fallback backend: ``onnx.reference`` with an inference-mode BatchNormalization, and the
layers a BN folds into computed in float32 for float16/bfloat16 inputs, as real kernels do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.numerics.dtypes import BFLOAT16
from bnfold.runtime.inputs import NUMPY_TYPES, InputSpec, output_names
from bnfold.runtime.serve import BackendError, first_line
from bnfold.verification.compare import Runner

if TYPE_CHECKING:
    import onnx


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
    from bnfold.model.proto import KNOWN_TYPES
    from bnfold.model.reading import all_tensors

    for tensor in all_tensors(model):
        if tensor.data_type not in KNOWN_TYPES:
            raise BackendError(
                f"tensor '{tensor.name}' has unknown element type {tensor.data_type}"
            )


def reference_model(path: str) -> tuple[list[InputSpec], list[str], Runner]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from bnfold.runtime.inputs import input_specs

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
