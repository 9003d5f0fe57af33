"""The fallback backend: ``onnx.reference`` with an inference-mode BatchNormalization, and the
layers a BN folds into computed in float32 for float16/bfloat16 inputs, as real kernels do."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnfold.runtime.inputs import InputSpec, output_names
from bnfold.runtime.serve import BackendError, first_line
from bnfold.verification.compare import Runner


def _low_precision(dtype: np.dtype[Any]) -> bool:
    """float16 and bfloat16: the dtypes whose arithmetic the reference evaluator must not do
    step by step (see ``_in_float32``)."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def _in_float32(base: Any, name: str) -> type:
    """``base`` (a reference-evaluator op) computing float16/bfloat16 inputs in float32 and
    rounding each output once into the input dtype.

    numpy, and ml_dtypes for bfloat16, round after every elementwise step: the reference Conv
    rounds its product and again after adding the bias, Gemm after each of alpha, @, beta and
    +. Every real kernel accumulates in float32 and rounds the result once; the step-by-step
    rounding is noise of the evaluator, as large as the fold's own rounding and not in either
    model, so it would be compared as if it were a difference between them.
    """

    def _run(self: Any, *inputs: Any, **attrs: Any) -> tuple[Any, ...]:
        low = next(
            (x.dtype for x in inputs if isinstance(x, np.ndarray) and _low_precision(x.dtype)),
            None,
        )
        if low is None:
            result: tuple[Any, ...] = base._run(self, *inputs, **attrs)
            return result
        up = [
            x.astype(np.float32) if isinstance(x, np.ndarray) and x.dtype == low else x
            for x in inputs
        ]
        return tuple(
            r.astype(low) if isinstance(r, np.ndarray) and r.dtype == np.float32 else r
            for r in base._run(self, *up, **attrs)
        )

    return type(name, (base,), {"op_domain": "", "_run": _run})


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
        _in_float32(_batchnorm_op(), "BatchNormalization"),
        *(_in_float32(base, name) for base, name in [*layers, (MatMul, "MatMul")]),
    ]


def _batchnorm_op() -> type:
    """BatchNormalization for the reference evaluator that honours inference mode.

    onnx 1.23's reference implementation for opsets 9-13 normalizes with batch statistics; a
    model in inference mode must use the running mean and variance it stores.
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

            def per_channel(p: np.ndarray) -> np.ndarray:
                return np.reshape(p, (1, *p.shape) + (1,) * (x.ndim - 1 - p.ndim))

            if training:
                m, v = x.mean(axis=axes), x.var(axis=axes)
            else:
                m, v = mean, var
            y = (x - per_channel(m)) / np.sqrt(per_channel(v) + eps)
            y = (y * per_channel(scale) + per_channel(bias)).astype(x.dtype)
            if not training or len(self.output) == 1:
                return (y,)
            mom = 0.9 if momentum is None else momentum
            run_mean = (mean * mom + m * (1 - mom)).astype(mean.dtype)
            run_var = (var * mom + v * (1 - mom)).astype(var.dtype)
            return (y, run_mean, run_var)[: len(self.output)]

    return BatchNormalization


def reference_model(path: str) -> tuple[list[InputSpec], list[str], Runner]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from bnfold.runtime.inputs import input_specs

    try:
        model = onnx.load(path)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        evaluator = ReferenceEvaluator(model, new_ops=_reference_ops(opset))
    except Exception as exc:  # the reference evaluator raises anything for unsupported models
        raise BackendError(first_line(exc)) from None
    outputs = output_names(model)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(r) for r in evaluator.run(None, feed)]
        except Exception as exc:
            raise BackendError(first_line(exc)) from None

    return input_specs(model), outputs, run
