"""onnxruntime sessions for the children: what a session wants fed, in ONNX element types."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from bnfold.runtime.inputs import InputSpec
from bnfold.runtime.levels import ORT_LEVELS
from bnfold.runtime.serve import BackendError, first_line

#: onnxruntime's type strings -> ONNX element type numbers (see bnfold.runtime.inputs.NUMPY_TYPES).
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
    path: str,
    *,
    provider: str = "CPUExecutionProvider",
    level: str = "disable_all",
    threads: int | None = None,
) -> Any:
    """An onnxruntime session of ``path`` on one execution provider at optimization ``level``
    (a key of ``ORT_LEVELS``). Raises BackendError when onnxruntime refuses the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own exception types for every failure
        raise BackendError(first_line(exc)) from None


def session_inputs(session: Any, shapeless: Collection[str] = ()) -> list[InputSpec]:
    """What an onnxruntime session wants fed; BackendError for a type bnfold cannot make.
    onnxruntime shows an input that declares no shape as a scalar: ``shapeless`` names them,
    whose rank is then unknown (``InputSpec.shape`` None)."""
    specs = []
    for i in session.get_inputs():
        if i.type not in _ORT_TYPES:
            raise BackendError(f"input '{i.name}' has type {i.type}, which bnfold cannot feed")
        shape: tuple[int | str | None, ...] | None = tuple(
            d if isinstance(d, int) else (d or None) for d in i.shape
        )
        if i.name in shapeless:
            shape = None
        specs.append(InputSpec(i.name, _ORT_TYPES[i.type], shape))
    return specs
