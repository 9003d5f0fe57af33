"""The BatchNormalization side of a fold: is it in inference mode, are its parameters constants,
do their types fit; and the per-channel Mul/Add scale layers read as the BN they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Constant, NotConstant, Scope
from bnfold.model.nodes import attr_is_reference, get_attr
from bnfold.numerics import arith as numerics

F64 = numerics.F64


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
