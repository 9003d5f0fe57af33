"""From a BatchNormalization forward to the layer after it: the only reader of its output,
directly or through a Flatten/Reshape to [N, C*HW], and the columns each channel becomes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bnfold.fold.rules.batchnorm import F64, BatchNorm
from bnfold.fold.rules.plan import RuleContext
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import NotConstant, Scope, Shape
from bnfold.model.nodes import attr_is_reference, get_attr, is_op


@dataclass
class Following:
    """The layer that reads a BatchNormalization's output, directly or through a Flatten (or a
    Reshape, which the rule must check flattens)."""

    consumer: proto.NodeProto
    flatten: proto.NodeProto | None = None
    #: Shape nodes that read BN's output for the Reshape's target (torch's x.view(x.size(0), -1)):
    #: BN's input has the same shape, so they read that after the fold
    shape_readers: tuple[proto.NodeProto, ...] = ()


#: Layers a BatchNormalization may reach through a Flatten/Reshape (they take 2-D input).
AFTER_FLATTEN = ("Gemm", "MatMul")


def find_following(
    scope: Scope, bn: proto.NodeProto, consumer_ops: tuple[str, ...]
) -> Following | None:
    """The only reader of BN's output when it is one of ``consumer_ops`` reading it as its data
    input (or a Flatten/Reshape whose only reader is a Gemm/MatMul), else None: then there is
    nothing to fold into."""

    def only_reader(name: str) -> proto.NodeProto | None:
        if name in scope.output_set or scope.uses(name) != 1:
            return None
        readers = scope.consumer_nodes(name)
        if len(readers) != 1 or list(readers[0].input).count(name) != 1:
            return None
        return readers[0] if readers[0].input[0] == name else None

    reader = only_reader(bn.output[0])
    shape_readers: tuple[proto.NodeProto, ...] = ()
    if reader is None and bn.output[0] not in scope.output_set:
        readers = scope.consumer_nodes(bn.output[0])
        shapes = tuple(n for n in readers if is_op(n, "Shape") and len(n.input) == 1)
        rest = [n for n in readers if not any(n is m for m in shapes)]
        if (
            shapes
            and len(rest) == 1
            and is_op(rest[0], "Reshape")
            and list(rest[0].input).count(bn.output[0]) == 1
            and rest[0].input[0] == bn.output[0]
        ):
            reader, shape_readers = rest[0], shapes
    flatten = None
    if (
        reader is not None
        and (is_op(reader, "Flatten") or is_op(reader, "Reshape"))
        and len(reader.output) == 1
    ):
        flatten, reader = reader, only_reader(reader.output[0])
    if reader is None or reader.domain not in ("", "ai.onnx") or reader.op_type not in consumer_ops:
        return None
    if flatten is not None and reader.op_type not in AFTER_FLATTEN:
        return None
    if shape_readers and flatten is None:
        return None
    return Following(reader, flatten, shape_readers)


def blocked_flatten(scope: Scope, bn: proto.NodeProto, consumer_ops: tuple[str, ...]) -> str | None:
    """Why BN -> X -> Flatten/Reshape -> Gemm/MatMul does not fold forward (X, e.g. a Relu, is in
    the way and not linear), or None when the BN is not followed that way."""
    path: list[proto.NodeProto] = []
    name = bn.output[0]
    for _ in range(3):
        readers = scope.consumer_nodes(name)
        if len(readers) != 1 or name in scope.output_set or not readers[0].output:
            return None
        path.append(readers[0])
        name = readers[0].output[0]
    x, flatten, layer = path
    if not (is_op(flatten, "Flatten") or is_op(flatten, "Reshape")) or is_op(x, "Flatten"):
        return None
    if not is_op(layer, layer.op_type) or layer.op_type not in AFTER_FLATTEN:
        return None
    if layer.op_type not in consumer_ops or is_op(x, "Identity"):
        return None
    return (
        f"not into the {describe(layer)} after it either: {describe(x)} between it and the "
        f"{flatten.op_type} is not a linear map the fold could pass through"
    )


def flattened_spatial(ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following) -> int:
    """How many input columns of the layer after it each channel becomes: 1 without a Flatten,
    else the spatial size H*W..., since Flatten(axis=1) of [N, C, H, W] puts channel c at columns
    c*HW .. c*HW + HW - 1 (NCHW order). A Reshape must flatten the same way, to [N, C*HW]."""
    flatten = following.flatten
    if flatten is None:
        return 1
    shape = ctx.shape(scope, bn.x)
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise Skip(
            Reason.UNKNOWN_SHAPE,
            f"the {describe(flatten)} after it flattens '{bn.x}', whose shape "
            f"{list(shape) if shape is not None else '(unknown)'} is not known past the batch "
            "axis: the columns of each channel cannot be told",
        )
    if shape[1] != bn.channels:
        raise Skip(
            Reason.SHAPE_MISMATCH,
            f"it has {bn.channels} channels but its input '{bn.x}' has shape {list(shape)}",
        )
    spatial = int(np.prod([int(d) for d in shape[2:] if d is not None], dtype=np.int64))
    if is_op(flatten, "Flatten"):
        if attr_is_reference(flatten, ("axis",)):
            raise Skip(
                Reason.FUNCTION_ATTRIBUTE,
                f"the {describe(flatten)} after it takes its axis from the function's attributes",
            )
        axis = int(get_attr(flatten, "axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if axis != 1:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"the {describe(flatten)} after it (axis {axis}) turns shape {list(shape)} into "
                "rows and columns that do not keep the batch axis apart from the channels",
            )
        return spatial
    _check_reshape_flattens(ctx, scope, flatten, shape, spatial * bn.channels, (bn.x, bn.y))
    return spatial


def _batch_then_minus_one(scope: Scope, name: str, same: tuple[str, str]) -> bool:
    """``name`` is Concat(Unsqueeze(Gather(Shape(v), 0), [0]), [-1]) with v one of ``same``:
    torch's ``x.view(x.size(0), -1)``, i.e. [N, -1]."""

    def const(value: str) -> list[int] | None:
        try:
            return [int(d) for d in np.asarray(scope.constant(value).array()).reshape(-1)]
        except NotConstant:
            return None

    concat = scope.producer_of(name)
    if concat is None or not is_op(concat, "Concat") or len(concat.input) != 2:
        return False
    if int(get_attr(concat, "axis", 0)) != 0 or const(concat.input[1]) != [-1]:
        return False
    unsqueeze = scope.producer_of(concat.input[0])
    if unsqueeze is None or not is_op(unsqueeze, "Unsqueeze"):
        return False
    axes = get_attr(unsqueeze, "axes")
    if axes is None and len(unsqueeze.input) > 1:
        axes = const(unsqueeze.input[1])
    gather = scope.producer_of(unsqueeze.input[0])
    if list(axes or []) != [0] or gather is None or not is_op(gather, "Gather"):
        return False
    if int(get_attr(gather, "axis", 0)) != 0 or const(gather.input[1]) != [0]:
        return False
    shape = scope.producer_of(gather.input[0])
    return (
        shape is not None
        and is_op(shape, "Shape")
        and not shape.attribute
        and shape.input[0] in same
    )


def computed_target(ctx: RuleContext, scope: Scope, name: str) -> list[int | None] | None:
    """The elements of a Reshape's shape input: numbers where they are constants, None where a
    piece is computed at run time (torch's ``x.size(0)`` as Unsqueeze(Gather(Shape(x), 0)),
    onnxscript's Reshape(Squeeze(Shape(x)[0:1]), [-1])); None when its length cannot be told.
    Only a constant or a Concat (axis 0) of constants and pieces of known length is read."""
    try:
        return [int(d) for d in np.asarray(scope.constant(name).array()).reshape(-1)]
    except NotConstant:
        pass
    node = scope.producer_of(name)
    if node is None or not is_op(node, "Concat") or attr_is_reference(node, ("axis",)):
        return None
    if int(get_attr(node, "axis", 0)) not in (0, -1):
        return None
    elements: list[int | None] = []
    for piece in node.input:
        try:
            elements += [int(d) for d in np.asarray(scope.constant(piece).array()).reshape(-1)]
            continue
        except NotConstant:
            pass
        length = ctx.shape(scope, piece)
        if length is None or len(length) != 1 or length[0] is None:
            return None
        elements += [None] * int(length[0])
    return elements


def keeps_batch(target: Sequence[int | None], shape: Shape) -> bool:
    """True when a Reshape of ``shape`` to ``target`` [?, d1, ..., dk] (the first element
    computed at run time, the others constants > 0) keeps the batch axis: d1 * ... * dk is the
    number of elements of ``shape[1:]``, so the first element can only be N (any other value
    would not fit the element count, and the model would fail at run time)."""
    if len(target) < 2 or target[0] is not None or any(d is None for d in shape[1:]):
        return False
    rest = [d for d in target[1:] if d is not None]
    if len(rest) != len(target) - 1 or any(d <= 0 for d in rest):
        return False
    return math.prod(rest) == math.prod(int(d) for d in shape[1:] if d is not None)


def _check_reshape_flattens(
    ctx: RuleContext,
    scope: Scope,
    reshape: proto.NodeProto,
    shape: Shape,
    columns: int,
    same: tuple[str, str],
) -> None:
    """Skip unless the Reshape turns ``shape`` [N, C, ...] into [N, C*HW] (N kept as a 0, a -1,
    or its own known value, or read from the shape of ``same``, BN's input or output)."""
    name = reshape.input[1] if len(reshape.input) > 1 else ""
    allowzero = int(get_attr(reshape, "allowzero", 0))
    try:
        target = scope.constant(name)
        dims = [int(d) for d in np.asarray(target.array()).reshape(-1)]
        known = len(target.shape) == 1 and len(dims) == 2
    except NotConstant as exc:
        computed = computed_target(ctx, scope, name)
        if computed is not None and keeps_batch(computed, shape):
            return  # [N, C*HW] (its first element computed, the element count fixes it)
        if not _batch_then_minus_one(scope, name, same):
            raise Skip(
                Reason.UNKNOWN_SHAPE,
                f"the {describe(reshape)} after it takes its shape from a value that is not a "
                f"constant ({exc}): it cannot be told to flatten per channel",
            ) from None
        dims, known, allowzero = [0, -1], True, 0  # the same as [0, -1]
    batch = shape[0]
    ok = known and (
        (dims[0] in (-1, 0) if not allowzero else dims[0] == -1)
        or (batch is not None and dims[0] == batch)
    )
    if ok:
        ok = dims[1] == columns or (dims[1] == -1 and dims[0] != -1)
    if not ok:
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"the {describe(reshape)} after it reshapes {list(shape)} to {dims}, not to "
            f"[N, {columns}]: its columns are not the channels' positions in NCHW order",
        )


def input_shift(bn: BatchNorm) -> F64:
    """t = beta - s * mean: BN(x) = s * x + t, per channel."""
    with np.errstate(over="ignore", invalid="ignore"):
        shift: F64 = bn.beta - bn.s * bn.mean
    return shift


def per_column(bn: BatchNorm, spatial: int, layer: proto.NodeProto, inner: int) -> tuple[F64, F64]:
    """(s, t) per input column of the layer after it: each channel's repeated ``spatial`` times
    (NCHW flatten order); Skip when they are not the ``inner`` columns ``layer`` sums over."""
    if bn.channels * spatial != inner:
        raise Skip(
            Reason.SHAPE_MISMATCH,
            f"it has {bn.channels} channels"
            + (f" of {spatial} columns each" if spatial > 1 else "")
            + f" but the {describe(layer)} after it sums over {inner}",
        )
    t = input_shift(bn)
    if spatial == 1:
        return bn.s, t
    return np.repeat(bn.s, spatial), np.repeat(t, spatial)
