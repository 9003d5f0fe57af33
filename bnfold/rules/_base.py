"""What every folding rule shares: reason codes, the BatchNormalization side of a fold, the walk
from a BatchNormalization back to its producer, and the plan a rule returns.

A rule never returns "no" silently: it raises ``Skip`` with a reason code and a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bnfold import numerics, proto
from bnfold.graph import Constant, NotConstant, Scope, Shape, attr_is_reference, get_attr, is_op

F64 = numerics.F64


class Reason(str, Enum):
    """Stable codes for what happened to a BatchNormalization (used in --json output)."""

    FOLDED = "folded"
    TRAINING_MODE = "training_mode"
    EXTRA_OUTPUTS = "extra_outputs"
    SPATIAL_MODE = "spatial_mode"
    NO_PRODUCER = "no_producer"
    UNSUPPORTED_PRODUCER = "unsupported_producer"
    SHARED_OUTPUT = "shared_output"
    GRAPH_OUTPUT = "graph_output"
    NON_CONSTANT_PARAM = "non_constant_param"
    NON_CONSTANT_WEIGHT = "non_constant_weight"
    FUNCTION_ATTRIBUTE = "function_attribute"
    SHAPE_MISMATCH = "shape_mismatch"
    NOT_PER_CHANNEL = "not_per_channel"
    UNKNOWN_RANK = "unknown_rank"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    NON_FINITE = "non_finite"
    PADDED_CONV = "padded_conv"
    UNKNOWN_SHAPE = "unknown_shape"


class Skip(Exception):
    """A BatchNormalization that must not be folded, with the reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@contextmanager
def unreadable_as_skip() -> Iterator[None]:
    """A constant the fold reads whose element type ONNX does not define (a damaged file, or a
    type from a newer ONNX) becomes a Skip for this node: its values cannot be read, so it stays,
    and the rest of the model folds as usual."""
    try:
        yield
    except proto.UnknownElementType as exc:
        raise Skip(Reason.UNSUPPORTED_DTYPE, f"{exc}, whose values bnfold cannot read") from None


class Defer(Exception):
    """The pattern touches a node already changed in this pass: look again in the next pass."""


def describe(node: proto.NodeProto) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} -> '{node.output[0]}'"


# -- the BatchNormalization side ---------------------------------------------------------------

PARAM_NAMES = ("scale", "B", "input_mean", "input_var")


@dataclass
class BatchNorm:
    """An inference-mode BatchNormalization with constant parameters, as float64."""

    node: proto.NodeProto
    x: str
    y: str
    epsilon: float
    s: F64  # gamma / sqrt(var + eps)
    mean: F64
    beta: F64
    params: tuple[Constant, ...]
    op: str = "BatchNormalization"  # or "Mul" / "Add": a per-channel scale layer

    @property
    def channels(self) -> int:
        return int(self.s.shape[0])


def _nonempty_outputs(node: proto.NodeProto) -> int:
    return sum(1 for o in node.output if o)


def check_mode(scope: Scope, node: proto.NodeProto) -> None:
    """Raise Skip unless the node normalizes with its running statistics (inference mode)."""
    opset = scope.opset
    ref = attr_is_reference(node, ("training_mode", "is_test", "spatial", "epsilon"))
    if ref:
        raise Skip(
            Reason.FUNCTION_ATTRIBUTE,
            f"its '{ref}' attribute comes from the calling function's attributes",
        )
    if opset >= 14 and int(get_attr(node, "training_mode", 0)) != 0:
        raise Skip(
            Reason.TRAINING_MODE,
            "training_mode=1: it normalizes with batch statistics, not running ones",
        )
    if opset <= 6 and int(get_attr(node, "is_test", 0)) == 0:
        raise Skip(
            Reason.TRAINING_MODE, f"is_test=0 (opset {opset}): it normalizes with batch statistics"
        )
    if opset <= 8 and int(get_attr(node, "spatial", 1)) == 0:
        raise Skip(
            Reason.SPATIAL_MODE,
            "spatial=0: its statistics are per (channel, position), not per channel",
        )
    extra = _nonempty_outputs(node) - 1
    if extra > 0:
        raise Skip(
            Reason.EXTRA_OUTPUTS,
            f"it also produces {extra} statistics output(s), which means training-mode "
            "semantics (batch statistics)",
        )


def read_batchnorm(scope: Scope, node: proto.NodeProto) -> BatchNorm:
    """The BatchNormalization's parameters as float64, or Skip with why they cannot be used."""
    check_mode(scope, node)
    if len(node.input) < 5 or not node.output or not node.output[0]:
        raise Skip(
            Reason.SHAPE_MISMATCH, "it does not have the five inputs BatchNormalization needs"
        )
    consts: list[Constant] = []
    for label, name in zip(PARAM_NAMES, node.input[1:5], strict=True):
        try:
            consts.append(scope.constant(name))
        except NotConstant as exc:
            message = f"its {label} '{name}' is not a constant: {exc}"
            raise Skip(Reason.NON_CONSTANT_PARAM, message) from None
    types = [c.elem_type for c in consts]
    for label, c, t in zip(PARAM_NAMES, consts, types, strict=True):
        if t not in numerics.FLOAT_TYPES:
            raise Skip(
                Reason.UNSUPPORTED_DTYPE,
                f"its {label} '{c.name}' is {numerics.dtype_name(t)}, not a float type",
            )
    shapes = [c.shape for c in consts]
    channels = shapes[0][0] if len(shapes[0]) == 1 else -1
    if any(len(shp) != 1 or shp[0] != channels for shp in shapes):
        raise Skip(
            Reason.SHAPE_MISMATCH,
            "its scale, B, mean and var are not 1-D of one length (shapes "
            + ", ".join(str(list(s)) for s in shapes)
            + ")",
        )
    gamma, beta, mean, var = (numerics.to_float64_array(c.array()) for c in consts)
    epsilon = float(np.float32(get_attr(node, "epsilon", 1e-5)))
    return BatchNorm(
        node=node,
        x=node.input[0],
        y=node.output[0],
        epsilon=epsilon,
        s=numerics.bn_scale(gamma, var, epsilon),
        mean=mean,
        beta=beta,
        params=tuple(consts),
    )


def check_dtypes(scope: Scope, bn: BatchNorm, x_type: int) -> None:
    """BN-15 allows float32 statistics on float16 data; earlier opsets need one type throughout."""
    if x_type not in numerics.FLOAT_TYPES:
        raise Skip(
            Reason.UNSUPPORTED_DTYPE,
            f"the producer's weight is {numerics.dtype_name(x_type)}, not a float type",
        )
    if bn.op != "BatchNormalization":
        const = bn.params[0]
        if const.elem_type != x_type:
            raise Skip(
                Reason.UNSUPPORTED_DTYPE,
                f"its constant '{const.name}' is {numerics.dtype_name(const.elem_type)}, the "
                f"layer's weight {numerics.dtype_name(x_type)}",
            )
        return
    scale_t, b_t, mean_t, var_t = (c.elem_type for c in bn.params)
    if scope.opset >= 15:
        legal = scale_t == b_t and mean_t == var_t
    else:
        legal = all(t == x_type for t in (scale_t, b_t, mean_t, var_t))
    if not legal:
        names = ", ".join(numerics.dtype_name(t) for t in (scale_t, b_t, mean_t, var_t))
        raise Skip(
            Reason.UNSUPPORTED_DTYPE,
            f"its parameter types ({names}) do not fit data of type "
            f"{numerics.dtype_name(x_type)} at opset {scope.opset}",
        )


# -- from the BatchNormalization back to its producer ------------------------------------------

THROUGH_OPS = ("Identity", "Add")


@dataclass
class Chain:
    """The producer of a BatchNormalization's input and the nodes in between."""

    producer: proto.NodeProto
    through: list[proto.NodeProto] = field(default_factory=list)  # nearest the BN first
    adds: list[Constant] = field(default_factory=list)  # the constants of the Add nodes
    #: the nodes this pass already changed (a rule that walks further, e.g. into the inputs of a
    #: Concat, must Defer on them too)
    is_dirty: Callable[[proto.NodeProto], bool] = field(default=lambda node: False, repr=False)


def _check_single_use(scope: Scope, name: str, reader: proto.NodeProto) -> None:
    if name in scope.output_set:
        raise Skip(
            Reason.GRAPH_OUTPUT,
            f"'{name}' (before it) is also a graph output, which must keep its value",
        )
    if scope.uses(name) != 1:
        others = [describe(n) for n in scope.consumer_nodes(name) if n is not reader]
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise Skip(
            Reason.SHARED_OUTPUT,
            f"'{name}' (before it) is also read by {shown or 'another node'}, which needs "
            "the unnormalized value",
        )


def walk_chain(
    scope: Scope,
    bn: proto.NodeProto,
    producer_ops: tuple[str, ...],
    is_dirty: Callable[[proto.NodeProto], bool] = lambda node: False,
    start: str | None = None,
) -> Chain:
    """Follow BN's input (or ``start``, the data input of a Mul/Add) back through Identity and
    constant Add nodes to the layer that makes it.

    Raises Defer on meeting a node that an earlier fold of this pass changed.
    """
    through: list[proto.NodeProto] = []
    adds: list[Constant] = []
    name, reader = (start if start is not None else bn.input[0]), bn
    while True:
        node = scope.producer_of(name)
        if node is None:
            where = (
                "a graph input"
                if name in scope.input_set
                else (
                    "a constant"
                    if name in scope.initializers
                    else "a value from an enclosing graph"
                )
            )
            raise Skip(Reason.NO_PRODUCER, f"its input '{name}' is {where}, not a layer output")
        if is_dirty(node):
            raise Defer
        _check_single_use(scope, name, reader)
        if is_op(node, "Identity"):
            through.append(node)
            name, reader = node.input[0], node
            continue
        if is_op(node, "Add") and len(node.input) == 2:
            const, other = split_constant(scope, node)
            if const is not None and other is not None:
                through.append(node)
                adds.append(const)
                name, reader = other, node
                continue
        if node.domain in ("", "ai.onnx") and node.op_type in producer_ops:
            return Chain(producer=node, through=through, adds=adds, is_dirty=is_dirty)
        raise unsupported_producer(node, through)


def unsupported_producer(node: proto.NodeProto, through: Sequence[proto.NodeProto]) -> Skip:
    """The refusal for a BN after ``node`` (through ``through``, nearest the BN first)."""
    via = " via " + ", ".join(n.op_type for n in reversed(through)) if through else ""
    return Skip(
        Reason.UNSUPPORTED_PRODUCER,
        f"it follows {describe(node)}{via}; only Conv, ConvTranspose, Gemm and MatMul are folded",
    )


def split_constant(scope: Scope, node: proto.NodeProto) -> tuple[Constant | None, str | None]:
    """(constant operand, the other operand's name) of a binary node with exactly one constant
    side; (None, None) otherwise."""
    found: list[Constant | None] = []
    for name in node.input:
        try:
            found.append(scope.constant(name))
        except NotConstant:
            found.append(None)
    if found[0] is None and found[1] is not None:
        return found[1], node.input[0]
    if found[1] is None and found[0] is not None:
        return found[0], node.input[1]
    return None, None


def per_channel(values: npt.NDArray[Any], rank: int, channels: int, what: str) -> F64:
    """A constant that broadcasts along axis 1 only (ONNX right-aligned rules), as a [C] vector."""
    shape = tuple(values.shape)
    if len(shape) > rank:
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"{what} has rank {len(shape)}, more than the rank-{rank} tensor it is added to",
        )
    aligned = (1,) * (rank - len(shape)) + shape
    ok = all(d == 1 for i, d in enumerate(aligned) if i != 1) and aligned[1] in (1, channels)
    if not ok:
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"{what} of shape {list(shape)} broadcasts over a rank-{rank} tensor along an "
            f"axis other than the channel axis 1 (it would need shape [{channels}, "
            + ", ".join(["1"] * (rank - 2))
            + "] or a scalar)",
        )
    flat = numerics.to_float64_array(values).reshape(-1)
    return np.broadcast_to(flat, (channels,)).astype(np.float64)


def added_bias(chain: Chain, rank: int, channels: int) -> F64:
    """The sum of the per-channel constants added between the producer and the BN."""
    total = np.zeros(channels, dtype=np.float64)
    for const in chain.adds:
        total = total + per_channel(
            const.array(), rank, channels, f"the added constant '{const.name}'"
        )
    return total


def read_scale(
    scope: Scope, node: proto.NodeProto, const: Constant, x: str, channels: int, rank: int
) -> BatchNorm:
    """A Mul (scale) or Add (shift) by a per-channel constant, as the BN it is equivalent to."""
    values = per_channel(const.array(), rank, channels, f"its constant '{const.name}'")
    zeros = np.zeros(channels, dtype=np.float64)
    if node.op_type == "Mul":
        s, beta = values, zeros
    else:
        s, beta = np.ones(channels, dtype=np.float64), values
    return BatchNorm(
        node=node,
        x=x,
        y=node.output[0],
        epsilon=0.0,
        s=s,
        mean=zeros,
        beta=beta,
        params=(const,),
        op=node.op_type,
    )


def check_channels(bn: BatchNorm, channels: int, producer: proto.NodeProto) -> None:
    if bn.channels != channels:
        raise Skip(
            Reason.SHAPE_MISMATCH,
            f"it has {bn.channels} channels but {describe(producer)} produces {channels}",
        )


def rounded(values: F64, elem_type: int, what: str) -> npt.NDArray[Any]:
    """Round a folded tensor once into its dtype; Skip if that overflows or was already bad."""
    return _finite(numerics.round_to(values, elem_type), elem_type, what)


def rounded_scaled(
    values: npt.NDArray[Any], scale: F64, elem_type: int, what: str
) -> numerics.Values:
    """``values * scale`` in float64, rounded once into ``elem_type``; Skip as ``rounded``.

    A weight of ``numerics.LAZY_FROM`` bytes (1 MiB) or more is checked chunk by chunk and
    returned as a ``LazyScaled``, computed again when it is written: memory stays at one chunk.
    """
    if values.nbytes < numerics.LAZY_FROM or values.ndim == 0:
        return _finite(numerics.scale_round(values, scale, elem_type), elem_type, what)
    shape = tuple(np.broadcast_shapes(values.shape, scale.shape))
    lazy = numerics.LazyScaled(values, scale, elem_type, shape)
    bad = lazy.count_non_finite()
    if bad:
        raise Skip(
            Reason.NON_FINITE,
            f"folding would give {bad} non-finite value(s) in the {what} "
            f"({numerics.dtype_name(elem_type)}), e.g. from a near-zero variance",
        )
    return lazy


def _finite(out: npt.NDArray[Any], elem_type: int, what: str) -> npt.NDArray[Any]:
    if not numerics.all_finite(out):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out.astype(np.float64))))
        raise Skip(
            Reason.NON_FINITE,
            f"folding would give {bad} non-finite value(s) in the {what} "
            f"({numerics.dtype_name(elem_type)}), e.g. from a near-zero variance",
        )
    return out


# -- from the BatchNormalization forward to the layer after it ---------------------------------


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
    _check_reshape_flattens(scope, flatten, shape, spatial * bn.channels, (bn.x, bn.y))
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


def _check_reshape_flattens(
    scope: Scope, reshape: proto.NodeProto, shape: Shape, columns: int, same: tuple[str, str]
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


class ForwardRule(Protocol):
    """One consumer type: folds a BatchNormalization into the layer after it."""

    @property
    def op_types(self) -> tuple[str, ...]: ...

    def plan_forward(
        self, ctx: RuleContext, scope: Scope, bn: BatchNorm, following: Following
    ) -> FoldPlan: ...


def input_shift(bn: BatchNorm) -> F64:
    """t = beta - s * mean: BN(x) = s * x + t, per channel."""
    with np.errstate(over="ignore", invalid="ignore"):
        shift: F64 = bn.beta - bn.s * bn.mean
    return shift


def per_column(bn: BatchNorm, spatial: int) -> tuple[F64, F64]:
    """(s, t) per input column of the layer after it: each channel's repeated ``spatial`` times
    (NCHW flatten order)."""
    t = input_shift(bn)
    if spatial == 1:
        return bn.s, t
    return np.repeat(bn.s, spatial), np.repeat(t, spatial)


# -- what a rule returns ---------------------------------------------------------------------


@dataclass
class TensorUpdate:
    """New contents for one input of the producer (a weight or bias), already rounded."""

    input_index: int
    values: numerics.Values  # an array, or a large weight computed when written
    elem_type: int
    name_hint: str


@dataclass
class FoldPlan:
    updates: list[TensorUpdate]
    op_type: str | None = None  # a new op type for the producer (MatMul becomes Gemm)
    set_attrs: dict[str, Any] = field(default_factory=dict)
    del_attrs: tuple[str, ...] = ()
    #: folds into the layers that feed the producer (the inputs of a Concat): each chain's layer
    #: takes its plan, the nodes between it and the producer go
    branches: list[tuple[Chain, FoldPlan]] = field(default_factory=list)
    #: a bias to add right after the layer, in a new Add node (a MatMul that has none)
    add_after: TensorUpdate | None = None
    #: what the fold did, for the report (default: "folded into <the producer>")
    note: str = ""


class RuleContext(Protocol):
    """What a rule may ask of the engine beyond the scope's own index."""

    def rank(self, scope: Scope, name: str) -> int | None: ...

    def shape(self, scope: Scope, name: str) -> Shape | None: ...


class FoldRule(Protocol):
    """One producer type: checks the pattern and computes the folded tensors."""

    @property
    def op_types(self) -> tuple[str, ...]: ...

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan: ...

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        """(channels, rank) of the producer's output, or Skip: what a Mul/Add must fit."""
        ...


def weight(scope: Scope, node: proto.NodeProto, index: int, label: str) -> Constant:
    """The producer's constant input ``index``, or Skip(non_constant_weight)."""
    name = node.input[index] if index < len(node.input) else ""
    try:
        return scope.constant(name)
    except NotConstant as exc:
        raise Skip(
            Reason.NON_CONSTANT_WEIGHT,
            f"{describe(node)} {label} '{name}' is not a constant: {exc}",
        ) from None


def optional_weight(scope: Scope, node: proto.NodeProto, index: int, label: str) -> Constant | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    return weight(scope, node, index, label)


# -- one base for the rules that fold into the layer before the BatchNormalization -------------


class LayerBeforeRule:
    """Conv, ConvTranspose, Gemm and MatMul fold alike: the layer's weight (input 1) is scaled
    along the axis that holds its output channels, and its bias (input 2, created when absent)
    becomes s * (b - mean) + beta. A subclass says only what differs, through the hooks:

    - ``check_layer``: refusals about the layer itself (attributes from a function, rank);
    - ``layout``: (channels, rank of the output) from the weight's shape;
    - ``scale_weight``: the weight scaled per output channel (the channel axis, groups);
    - ``layer_bias``: the bias the layer already adds (a Conv's b, a Gemm's beta * C);
    - ``finish``: the plan's op type and attribute changes (MatMul becomes Gemm).

    Every check runs before the weight is scaled: a refusal costs no arithmetic on weights.
    """

    op_types: tuple[str, ...] = ()
    weight_label = "weight"
    bias_label = "bias"
    bias_suffix = "_bias"

    def check_layer(self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto) -> None:
        """Skip for what makes the layer unfoldable whatever its weights (default: nothing)."""

    def layout(
        self, ctx: RuleContext, scope: Scope, layer: proto.NodeProto, w: Constant, after: str
    ) -> tuple[int, int]:
        """(output channels, output rank) of the layer, or Skip when its weight does not fit;
        ``after`` is the value the BN or scale layer reads (the layer's output, or what an Add
        after it makes)."""
        raise NotImplementedError

    def scale_weight(self, layer: proto.NodeProto, w: Constant, s: F64) -> numerics.Values:
        """The weight with each output channel c scaled by s[c], rounded into its dtype."""
        raise NotImplementedError

    def layer_bias(
        self, scope: Scope, layer: proto.NodeProto, channels: int
    ) -> tuple[F64 | None, Constant | None]:
        """(what the layer adds per channel as float64, the constant it comes from); Skip when it
        does not fit. Default: an optional [C] bias at input 2."""
        b = optional_weight(scope, layer, 2, self.bias_label)
        if b is None:
            return None, None
        if b.shape != (channels,):
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"{describe(layer)} {self.bias_label} has shape {list(b.shape)}",
            )
        return numerics.to_float64_array(b.array()), b

    def finish(self, scope: Scope, plan: FoldPlan) -> FoldPlan:
        """Attribute and op-type changes the fold needs (default: none)."""
        return plan

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        """(channels, rank) of the producer's output, or Skip: what a Mul/Add must fit."""
        self.check_layer(ctx, scope, producer)
        w = weight(scope, producer, 1, self.weight_label)
        return self.layout(ctx, scope, producer, w, producer.output[0])

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        layer = chain.producer
        self.check_layer(ctx, scope, layer)
        w = weight(scope, layer, 1, self.weight_label)
        check_dtypes(scope, bn, w.elem_type)
        channels, rank = self.layout(ctx, scope, layer, w, bn.x)
        check_channels(bn, channels, layer)
        bias = added_bias(chain, rank, channels)
        existing, b = self.layer_bias(scope, layer, channels)
        if existing is not None:
            bias = existing + bias
        new_w = self.scale_weight(layer, w, bn.s)
        new_b = rounded(
            numerics.folded_bias(bn.s, bias, bn.mean, bn.beta), w.elem_type, self.bias_label
        )
        hint = b.name if b is not None else f"{layer.name or w.name}{self.bias_suffix}"
        return self.finish(
            scope,
            FoldPlan(
                [
                    TensorUpdate(1, new_w, w.elem_type, w.name),
                    TensorUpdate(2, new_b, w.elem_type, hint),
                ]
            ),
        )


class IntoLayersRule:
    """The base of rules that fold a BN into the layers behind another node (a Concat's inputs,
    the layer before a Reshape/Transpose): they hold the layer rules they hand each part to,
    and a Mul/Add after such a node is not a scale layer they fold (bnfold never has)."""

    op_types: tuple[str, ...] = ()
    scale_layers = False
    #: how the scale-layer refusal ends: "... is not folded <scale_refusal>"
    scale_refusal = ""

    def __init__(self, layers: Sequence[FoldRule]) -> None:
        self.layers: dict[str, FoldRule] = rules_by_op(layers)

    def output_channels(
        self, ctx: RuleContext, scope: Scope, producer: proto.NodeProto
    ) -> tuple[int, int]:
        raise Skip(
            Reason.UNSUPPORTED_PRODUCER,
            f"a scale layer after {describe(producer)} is not folded {self.scale_refusal}",
        )


def rules_by_op(rules: Sequence[FoldRule] | Sequence[ForwardRule]) -> dict[str, Any]:
    """{op type: rule} for an ordered tuple of rules; two rules claiming one op type is an error,
    not a silent replacement of the first by the second."""
    found: dict[str, Any] = {}
    for rule in rules:
        for op in rule.op_types:
            if op in found:
                raise ValueError(
                    f"rules {type(found[op]).__name__} and {type(rule).__name__} both fold "
                    f"into {op}: give each op type one rule"
                )
            found[op] = rule
    return found
