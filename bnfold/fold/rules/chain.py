"""From a BatchNormalization back to the layer that makes its input: through Identity and
constant Add nodes, each value read by one node only; and the layer's constant inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bnfold.fold.rules.batchnorm import F64, per_channel
from bnfold.fold.rules.reasons import Defer, Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Constant, NotConstant, Scope
from bnfold.model.nodes import is_op

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


def check_single_use(
    scope: Scope, name: str, reader: proto.NodeProto, *, shape_readers: bool = False
) -> None:
    """Skip unless ``reader`` alone reads ``name`` (and it is no graph output): the fold changes
    its values. With ``shape_readers``, Shape nodes may read it too: a value that keeps its name
    and its shape through the fold (one the layer, or a Reshape after it, still writes)."""
    if name in scope.output_set:
        raise Skip(
            Reason.GRAPH_OUTPUT,
            f"'{name}' (before it) is also a graph output, which must keep its value",
        )
    shapes = [
        n
        for n in scope.consumer_nodes(name)
        if shape_readers and n is not reader and is_op(n, "Shape") and list(n.input) == [name]
    ]
    if scope.uses(name) - len(shapes) != 1:
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
    shape_readers: bool = False,
) -> Chain:
    """Follow BN's input (or ``start``, the data input of a Mul/Add) back through Identity and
    constant Add nodes to the layer that makes it. With ``shape_readers``, Shape nodes may also
    read ``start``, which keeps its name and shape (see ``check_single_use``).

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
        check_single_use(scope, name, reader, shape_readers=shape_readers and not through)
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
        raise activation_refusal(scope, node, through) or unsupported_producer(node, through)


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


def added_bias(chain: Chain, rank: int, channels: int) -> F64:
    """The sum of the per-channel constants added between the producer and the BN."""
    total = np.zeros(channels, dtype=np.float64)
    for const in chain.adds:
        total = total + per_channel(
            const.array(), rank, channels, f"the added constant '{const.name}'"
        )
    return total


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


def outer_producer(scope: Scope, name: str) -> tuple[proto.NodeProto | None, Scope]:
    """The node that makes ``name`` as seen from ``scope`` (in it or a graph around it)."""
    where: Scope | None = scope
    while where is not None:
        node = where.producer_of(name)
        if node is not None or where.defines(name):
            return node, where
        where = where.parent
    return None, scope


def activation_refusal(
    scope: Scope, node: proto.NodeProto, through: Sequence[proto.NodeProto]
) -> Skip | None:
    """The refusal for a BN whose walk back met ``node`` (through ``through``, nearest the BN
    first) when that is a DequantizeLinear of an activation, else None."""
    if not is_op(node, "DequantizeLinear") or not node.input or not node.input[0]:
        return None
    try:
        scope.constant(node.input[0])
        return None  # a dequantized constant, not an activation
    except NotConstant:
        pass
    quant, _ = outer_producer(scope, node.input[0])
    what = f" of {describe(quant)}" if quant is not None else ""
    if quant is not None and is_op(quant, "QuantizeLinear") and quant.input:
        layer, _ = outer_producer(scope, quant.input[0])
        if layer is not None:
            what += f" after {describe(layer)}"
    via = " via " + ", ".join(n.op_type for n in reversed(through)) if through else ""
    return Skip(
        Reason.QUANTIZED_ACTIVATION,
        f"it reads the quantized activation of {describe(node)}{what}{via}: the values are "
        "rounded to the quantization grid before the normalization, so no layer can take it "
        "exactly; fold BatchNormalization before quantizing (run bnfold on the float model, then "
        "quantize it)",
    )
