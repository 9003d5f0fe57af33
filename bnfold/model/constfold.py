"""Evaluate the small constant subgraphs exporters use to produce weights and BN parameters.

Caffe2-exported model-zoo files make every weight with ConstantOfShape; others reshape, cast,
unsqueeze or scale a constant before use. Such a value is a constant as much as an initializer
is, so bnfold evaluates it with numpy, op by op, with ONNX semantics: elementwise float
arithmetic is IEEE-exact (as in onnxruntime), shape ops move values without arithmetic. What is
not listed here, or not exactly reproducible (integer Div), stays "not a constant", with the
reason.

Evaluation is bounded: each evaluator works out its result's size from its inputs' shapes and
attributes *before* it allocates, so a tiny model cannot make bnfold allocate without bound
(a ConstantOfShape of [2^20, 2^20], a broadcasting Mul of [N, 1] by [1, N], a Concat doubling
chain). One result may take ``MAX_BYTES``, all results of one fold together ``MAX_TOTAL_BYTES``
(see ``Budget``); past that the value is "too large to evaluate" and the BN stays, with why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.model import proto

Array = npt.NDArray[Any]

#: Largest result (elements) bnfold evaluates: a ConstantOfShape of 10^9 is not a weight.
MAX_ELEMENTS = 1 << 26
#: Largest result (bytes) bnfold evaluates: 64 Mi float32 values, a very large layer's weight.
MAX_BYTES = 256 << 20
#: All results evaluated while folding one model, together (bytes): several times the computed
#: weights of the largest model-zoo networks that make them with ConstantOfShape.
MAX_TOTAL_BYTES = 1 << 30


class CannotEvaluate(Exception):
    """The node is not evaluated at fold time; the message says why."""


class TooLarge(CannotEvaluate):
    """The result would take more memory than bnfold gives constant evaluation."""


class Budget:
    """Bytes of new arrays constant evaluation may still allocate for one model (its fold).

    Shared by every scope of a pass, so many moderate constants cannot add up to gigabytes
    either; a pass's values are dropped when it ends (``new_pass``). What was too large is
    remembered for the whole fold (``refused``), so later passes do not evaluate it again.
    """

    def __init__(self, total: int | None = None) -> None:
        self.total = MAX_TOTAL_BYTES if total is None else total
        self.spent = 0
        self.refused: dict[tuple[str, str], str] = {}  # (scope path, value name) -> why

    def new_pass(self) -> None:
        """The values evaluated so far are gone: the whole budget is available again."""
        self.spent = 0

    @property
    def left(self) -> int:
        return self.total - self.spent


_BUDGET: ContextVar[Budget | None] = ContextVar("bnfold_constfold_budget", default=None)


@contextmanager
def _spending(budget: Budget | None) -> Iterator[None]:
    token = _BUDGET.set(budget)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _attr(node: proto.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            if a.ref_attr_name:
                raise CannotEvaluate(f"its '{name}' comes from the calling function's attributes")
            return proto.get_attribute_value(a)
    return default


def _axes(node: proto.NodeProto, inputs: Sequence[Array | None], opset: int) -> list[int] | None:
    if opset >= 13:
        return None if len(inputs) < 2 or inputs[1] is None else [int(a) for a in inputs[1]]
    axes = _attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _constant_of_shape(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    shape = tuple(int(d) for d in _need(x, 0))
    if any(d < 0 for d in shape):
        raise CannotEvaluate(f"negative shape {list(shape)}")
    value = _attr(node, "value")
    fill = proto.to_array(value).reshape(-1) if value is not None else np.zeros(1, "f4")
    _check_size(math.prod(shape), fill.dtype)
    return np.full(shape, fill[0], dtype=fill.dtype)


def _unsqueeze(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    data = _need(x, 0)
    axes = _axes(node, x, opset)
    if axes is None:
        raise CannotEvaluate("Unsqueeze without axes")
    rank = data.ndim + len(axes)
    out = data
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        out = np.expand_dims(out, axis)
    return out


def _squeeze(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    data = _need(x, 0)
    axes = _axes(node, x, opset)
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(a + data.ndim if a < 0 else a for a in axes))


def _reshape(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    data = _need(x, 0)
    shape = [int(d) for d in (_need(x, 1) if opset >= 5 else _attr(node, "shape", []))]
    if not int(_attr(node, "allowzero", 0)):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _cast(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    to = int(_attr(node, "to"))
    try:
        dtype = proto.tensor_dtype_to_np_dtype(to)
    except (KeyError, ValueError):
        raise CannotEvaluate(f"Cast to element type {to}") from None
    data = _need(x, 0)
    if data.dtype.kind in "fc" and np.dtype(dtype).kind in "iub":
        raise CannotEvaluate("Cast from float to integer (rounding is backend-defined)")
    _check_size(data.size, dtype)
    return data.astype(dtype)


def _shape(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    """Shape (start/end from opset 15): of a stand-in of the input's shape (see ``Scope``)."""
    dims = list(_need(x, 0).shape)
    start, end = int(_attr(node, "start", 0)), _attr(node, "end")
    stop = len(dims) if end is None else int(end)
    return np.array(dims[slice(start, stop)], dtype=np.int64)


def _cast_like(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    """CastLike: to the element type of input 1 (a stand-in of that type), as Cast does."""
    data, like = _need(x, 0), _need(x, 1)
    if data.dtype.kind in "fc" and like.dtype.kind in "iub":
        raise CannotEvaluate("CastLike from float to integer (rounding is backend-defined)")
    _check_size(data.size, like.dtype)
    return data.astype(like.dtype)


def _expand(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    data = _need(x, 0)
    shape = tuple(int(d) for d in _need(x, 1))
    if any(d < 0 for d in shape):
        raise CannotEvaluate(f"negative shape {list(shape)}")
    out = np.broadcast_shapes(data.shape, shape)
    _check_size(math.prod(out), data.dtype)
    expanded: Array = np.broadcast_to(data, out).copy()
    return expanded


def _flatten(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    data = _need(x, 0)
    axis = int(_attr(node, "axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    rows = int(np.prod(data.shape[:axis], dtype=np.int64))
    return data.reshape(rows, -1) if data.size else data.reshape(rows, 0)


def _transpose(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    perm = _attr(node, "perm")
    data = _need(x, 0)
    _check_size(data.size, data.dtype)  # made contiguous: a copy
    return np.transpose(data, axes=None if perm is None else [int(p) for p in perm])


def _concat(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
    parts = [a for a in x if a is not None]
    if not parts:
        raise CannotEvaluate("Concat without inputs")
    _check_size(sum(a.size for a in parts), np.result_type(*parts))
    return np.concatenate(parts, axis=int(_attr(node, "axis", 0)))


def _same_type(x: list[Array | None], count: int) -> list[Array]:
    arrays = [_need(x, i) for i in range(count)]
    if len({a.dtype for a in arrays}) != 1:
        raise CannotEvaluate("its inputs have different element types")
    return arrays


def _binary(fn: Callable[[Array, Array], Array], floats_only: bool = False) -> Evaluator:
    def evaluate(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
        a, b = _same_type(x, 2)
        if floats_only and a.dtype.kind != "f":
            raise CannotEvaluate(f"{node.op_type} of {a.dtype} (only float arithmetic is exact)")
        if opset < 7 and int(_attr(node, "broadcast", 0)):
            raise CannotEvaluate("legacy broadcast (opset < 7)")
        _check_size(math.prod(np.broadcast_shapes(a.shape, b.shape)), a.dtype)
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b), dtype=a.dtype)

    return evaluate


def _unary(fn: Callable[[Array], Array], floats_only: bool = True) -> Evaluator:
    def evaluate(node: proto.NodeProto, x: list[Array | None], opset: int) -> Array:
        a = _need(x, 0)
        if floats_only and a.dtype.kind != "f":
            raise CannotEvaluate(f"{node.op_type} of {a.dtype}")
        _check_size(a.size, a.dtype)
        with np.errstate(all="ignore"):
            return np.asarray(fn(a), dtype=a.dtype)

    return evaluate


Evaluator = Callable[[proto.NodeProto, list[Array | None], int], Array]

EVALUATORS: dict[str, Evaluator] = {
    "Identity": lambda node, x, opset: _need(x, 0),
    "ConstantOfShape": _constant_of_shape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Shape": _shape,
    "Expand": _expand,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Concat": _concat,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide, floats_only=True),
    "Neg": _unary(np.negative, floats_only=False),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
}


def _need(x: Sequence[Array | None], i: int) -> Array:
    if i >= len(x) or x[i] is None:
        raise CannotEvaluate(f"its input {i} is missing")
    value = x[i]
    assert value is not None
    return value


def _check_size(elements: int, dtype: npt.DTypeLike) -> None:
    """Refuse, before allocating, a result of ``elements`` values of ``dtype`` that is too large
    on its own or for what is left of the fold's budget."""
    nbytes = elements * np.dtype(dtype).itemsize
    if elements > MAX_ELEMENTS or nbytes > MAX_BYTES:
        raise TooLarge(
            f"its result would have {elements} elements ({_mib(nbytes)}), too large to evaluate "
            f"(bnfold evaluates up to {MAX_ELEMENTS} elements, {_mib(MAX_BYTES)})"
        )
    budget = _BUDGET.get()
    if budget is not None and nbytes > budget.left:
        raise TooLarge(
            f"its result ({_mib(nbytes)}) is too large to evaluate: constants evaluated for this "
            f"model would pass {_mib(budget.total)} in all"
        )


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB" if nbytes >= 1 << 20 else f"{nbytes} bytes"


def evaluate(
    node: proto.NodeProto, inputs: list[Array | None], opset: int, budget: Budget | None = None
) -> Array:
    """The value of ``node``'s first output given its constant inputs, or CannotEvaluate.

    New memory the result takes is charged to ``budget`` (checked before allocating).
    """
    evaluator = EVALUATORS.get(node.op_type)
    if evaluator is None or node.domain not in ("", "ai.onnx"):
        raise CannotEvaluate(f"bnfold does not evaluate {node.op_type} nodes")
    try:
        with _spending(budget):
            result = np.ascontiguousarray(evaluator(node, inputs, opset))
        _check_size(int(result.size), result.dtype)  # a view of an input: within bounds already
    except CannotEvaluate:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, np.exceptions.AxisError) as exc:
        raise CannotEvaluate(f"{node.op_type} does not apply to its inputs ({exc})") from None
    if budget is not None and not any(
        a is not None and np.may_share_memory(result, a) for a in inputs
    ):
        budget.spent += result.nbytes
    return result
