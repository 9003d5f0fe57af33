"""MatMul/Gemm -> [Add] -> Reshape/Transpose ... -> BatchNormalization (sequence and point-cloud
models; a Linear reshaped to [N, C, 1, 1]): the BN folds into the layer's columns when the
Reshape/Transpose nodes carry the layer's last (column) axis to the BN's channel axis 1.

That is decided exactly, from known shapes: a Transpose moves axis p to ``perm.index(p)``; a
Reshape keeps axis p of ``in`` as axis q of ``out`` when ``in[p] == out[q]`` and the elements
before them are grouped alike (``prod(in[:p]) == prod(out[:q])``, row-major order), since then
every element keeps its index along that axis.

A Reshape may also split the column axis with the channel as its OUTERMOST factor (a DCGAN
generator head: Gemm [N, 128] -> Reshape [N, 8, 4, 4] -> BatchNorm2d(8)): axis q of ``out`` is
the outermost factor of axis p of ``in`` when both end the same block of elements
(``prod(out[q:]) == prod(in[p:])``) and the elements after q are a whole number h of the elements
after p (``prod(out[q+1:]) == h * prod(in[p+1:])``); then index_q = index_p // h, so channel c
owns the h consecutive columns h*c .. h*c + h - 1 (h multiplies over several splits). The BN then
folds into the layer as a BN over its columns with each channel's parameters repeated h times.
Anything else (a split whose outermost factor is mixed with other axes or ends up off axis 1, a
Reshape that merges the column axis with others, or puts it elsewhere) is ``not_per_channel``.

A 2-D layer output folds by the layer's own rule (a MatMul becomes a Gemm). On a higher-rank
MatMul output ([N, L, C] @ [C_in, C] then Transpose to [N, C, L]) B's columns are scaled and the
shift goes into the bias Add after the MatMul, or a new one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bnfold.fold.rules import dequantized
from bnfold.fold.rules.base import IntoLayersRule
from bnfold.fold.rules.batchnorm import BatchNorm, check_dtypes
from bnfold.fold.rules.chain import (
    Chain,
    added_bias,
    check_single_use,
    split_constant,
    unsupported_producer,
    walk_chain,
    weight,
)
from bnfold.fold.rules.dequantized import Dequantized
from bnfold.fold.rules.following import computed_target, keeps_batch
from bnfold.fold.rules.plan import FoldPlan, RuleContext, TensorUpdate
from bnfold.fold.rules.reasons import Defer, Reason, Skip, describe
from bnfold.fold.rules.rounding import rounded, rounded_scaled
from bnfold.model import proto
from bnfold.model.graph import NotConstant, Scope, Shape
from bnfold.model.nodes import attr_is_reference, get_attr, is_op
from bnfold.numerics import arith as numerics

#: Ops that move elements without changing them: Transpose permutes axes, the others keep the
#: row-major order and only regroup the axes.
MOVES = ("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten")


class ReshapeBN(IntoLayersRule):
    op_types: tuple[str, ...] = MOVES
    scale_refusal = "through it"

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        moves = [chain.producer]  # nearest the BN first
        if _layer_behind(scope, chain.producer.input[0]) not in self.layers:
            # no layer to fold into behind the Reshape/Transpose: the refusal bnfold always gave
            raise unsupported_producer(chain.producer, chain.through)
        name = chain.producer.input[0]
        while (node := scope.producer_of(name)) is not None and node.op_type in MOVES:
            if not is_op(node, node.op_type):
                break
            if chain.is_dirty(node):
                raise Defer
            # a Shape may read it too (torch's x.view(x.size(0), ...)): its shape stays
            check_single_use(scope, name, moves[-1], shape_readers=True)
            moves.append(node)
            name = node.input[0]
        sub = walk_chain(
            scope, moves[-1], tuple(self.layers), chain.is_dirty, start=name, shape_readers=True
        )
        layer = sub.producer
        shape = ctx.shape(scope, name)
        if shape is None:
            raise Skip(
                Reason.UNKNOWN_SHAPE,
                f"the shape of {describe(layer)}'s output is unknown: where its columns go "
                f"through the {_ops(moves)} after it cannot be told",
            )
        rank = len(shape)
        # the layer's column axis followed to the BN: index along ``axis`` = column // group
        axis, group = rank - 1, 1
        for node in reversed(moves):
            axis, group, shape = _follow(ctx, scope, node, axis, group, shape)
        if axis != 1 and group > 1:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"the {_ops(moves)} between {describe(layer)} and it split the layer's columns "
                f"and put their outermost factor on axis {axis} of its input {list(shape)}: its "
                "channel axis 1 is not the outermost factor of the split column axis",
            )
        if axis != 1:
            raise Skip(
                Reason.NOT_PER_CHANNEL,
                f"the {_ops(moves)} between {describe(layer)} and it put the layer's columns on "
                f"axis {axis} of its input {list(shape)}, not on its channel axis 1",
            )
        if shape[1] != bn.channels:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels but {describe(layer)} has {shape[1]} columns"
                if group == 1
                else f"it has {bn.channels} channels but the {_ops(moves)} split "
                f"{describe(layer)}'s columns into {shape[1]} groups of {group}",
            )
        # BN(x + a) = s * (x - (mean - a)) + beta: an Add between the Reshape and the BN
        mean = bn.mean - added_bias(chain, len(shape), bn.channels)
        piece = replace(bn, x=name, mean=mean)
        through = f" through {_ops(moves)} (its columns are the channels)"
        if group > 1:
            # the shapes may be declared ones (all there is): never repeat the parameters past
            # the columns the layer's weight can have
            b = weight(scope, layer, 1, "B")
            if bn.channels * group > max(b.shape, default=1):
                raise Skip(
                    Reason.SHAPE_MISMATCH,
                    f"it has {bn.channels} channels of {group} columns each, more than the B "
                    f"{list(b.shape)} of {describe(layer)} has columns",
                )
            # channel c is columns group*c .. group*c + group - 1: a BN over the columns with
            # each channel's parameters repeated ``group`` times
            piece = replace(
                piece,
                s=np.repeat(bn.s, group),
                mean=np.repeat(mean, group),
                beta=np.repeat(bn.beta, group),
            )
            through = f" through {_ops(moves)} (each channel is {group} consecutive columns)"
        if rank == 2:
            plan = self.layers[layer.op_type].plan(ctx, scope, piece, sub)
            target = (
                f"Gemm '{layer.name or layer.output[0]}' (was MatMul)"
                if plan.op_type
                else describe(layer)
            )
            return FoldPlan([], branches=[(sub, plan)], note=f"into {target}{through}")
        branches = _rank_n_matmul(scope, piece, sub)
        return FoldPlan([], branches=branches, note=f"into {describe(layer)}{through}")


def _ops(moves: Sequence[proto.NodeProto]) -> str:
    return " and ".join(describe(n) for n in reversed(moves))


def _layer_behind(scope: Scope, name: str) -> str | None:
    """The op type of the first node before ``name`` that is not a Reshape, Transpose, Identity
    or constant Add (no use checks)."""
    for _ in range(64):
        node = scope.producer_of(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in (*MOVES, "Identity"):
            name = node.input[0]
            continue
        if node.op_type == "Add" and len(node.input) == 2:
            const, other = split_constant(scope, node)
            if const is not None and other is not None:
                name = other
                continue
        return str(node.op_type)
    return None


def _follow(
    ctx: RuleContext, scope: Scope, node: proto.NodeProto, axis: int, group: int, shape: Shape
) -> tuple[int, int, Shape]:
    """Where axis ``axis`` of ``node``'s input (of ``shape``), whose index is the layer's column
    // ``group``, is in its output: (that axis, its group, the output shape)."""
    if attr_is_reference(node):
        raise Skip(
            Reason.FUNCTION_ATTRIBUTE,
            f"{describe(node)} takes an attribute from the function's attributes",
        )
    if is_op(node, "Transpose"):
        perm = [int(p) for p in get_attr(node, "perm", list(range(len(shape)))[::-1])]
        if sorted(perm) != list(range(len(shape))):
            raise Skip(
                Reason.SHAPE_MISMATCH, f"{describe(node)} has perm {perm} for shape {list(shape)}"
            )
        return perm.index(axis), group, tuple(shape[p] for p in perm)
    out = ctx.shape(scope, node.output[0])
    kept = False  # the batch axis is kept, whatever the target's first element computes
    if is_op(node, "Reshape") and len(node.input) > 1 and (out is None or None in out[1:]):
        target = computed_target(ctx, scope, node.input[1])
        if target is not None and keeps_batch(target, shape):
            out, kept = (shape[0], *(int(d) for d in target[1:] if d is not None)), True
    if out is None or any(d is None for d in (*shape[1:], *out[1:])):
        raise Skip(
            Reason.UNKNOWN_SHAPE,
            f"{describe(node)} reshapes {list(shape)} to "
            f"{list(out) if out is not None else 'an unknown shape'}: where the layer's columns "
            "go cannot be told",
        )
    if (shape[0] is None or out[0] is None) and not (kept or _keeps_batch(scope, node, shape, out)):
        # a split is told from the dimensions after the batch axis alone (row-major strides)
        if axis >= 1 and (_outermost_factor(shape, out, axis) or _cuts(shape, out, axis)):
            return _split(node, shape, out, axis, group)
        raise Skip(
            Reason.UNKNOWN_SHAPE,
            f"{describe(node)} reshapes {list(shape)} to {list(out)}: whether it keeps the "
            "batch axis cannot be told",
        )
    # with the batch axis kept, compare what comes after it
    start = 1 if shape[0] is None or out[0] is None else 0
    before = int(np.prod([d or 1 for d in shape[start:axis]], dtype=np.int64))
    fits = [
        q
        for q in range(start, len(out))
        if out[q] == shape[axis]
        and int(np.prod([d or 1 for d in out[start:q]], dtype=np.int64)) == before
    ]
    if axis < start:
        raise _merges(node, shape, out, axis)
    if fits:
        return (1 if 1 in fits else fits[0]), group, out
    return _split(node, shape, out, axis, group)


def _split(
    node: proto.NodeProto, shape: Shape, out: Shape, axis: int, group: int
) -> tuple[int, int, Shape]:
    """(axis, group, out) when the Reshape splits axis ``axis`` with an axis of ``out`` as its
    outermost factor; else Skip(not_per_channel), saying whether it splits or merges."""
    split = _outermost_factor(shape, out, axis)
    if split is not None:
        q, h = split
        return q, group * h, out
    if _cuts(shape, out, axis):
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"{describe(node)} reshapes {list(shape)} to {list(out)}, which splits axis {axis} "
            "(the layer's columns) but mixes their outermost factor with other axes: the BN "
            "channel is not the outermost factor of the split column axis",
        )
    raise _merges(node, shape, out, axis)


def _merges(node: proto.NodeProto, shape: Shape, out: Shape, axis: int) -> Skip:
    return Skip(
        Reason.NOT_PER_CHANNEL,
        f"{describe(node)} reshapes {list(shape)} to {list(out)}, which splits or merges "
        f"axis {axis} (the layer's columns) with others",
    )


def _tail(shape: Shape, start: int) -> int | None:
    """The number of elements of ``shape[start:]`` (None when a dimension there is unknown)."""
    dims = shape[start:]
    if any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims if d is not None)  # Python ints: no overflow


def _outermost_factor(shape: Shape, out: Shape, axis: int) -> tuple[int, int] | None:
    """(q, h) when the Reshape of ``shape`` to ``out`` splits axis ``axis`` with axis q of
    ``out`` as its outermost factor: index_q = index_axis // h for every element (h > 1, and
    out[q] > 1 so that q carries the index). Only the dimensions from ``axis`` and from q on
    count (row-major strides), so an unknown batch axis in front does not matter."""
    inner, block = _tail(shape, axis + 1), _tail(shape, axis)
    if inner is None or block is None or inner == 0:
        return None
    for q in range(len(out)):
        after, size = _tail(out, q + 1), out[q]
        if after is None or size is None or size <= 1 or size * after != block:
            continue
        if after % inner == 0 and after // inner > 1:
            return q, after // inner
    return None


def _cuts(shape: Shape, out: Shape, axis: int) -> bool:
    """Whether an axis boundary of ``out`` falls strictly inside the block of elements that axis
    ``axis`` of ``shape`` spans: the Reshape splits that axis (rather than only merging it)."""
    inner, block = _tail(shape, axis + 1), _tail(shape, axis)
    if inner is None or block is None:
        return False
    for q in range(len(out)):
        after = _tail(out, q + 1)
        if after is not None and inner < after < block and after % inner == 0:
            return True
    return False


def _keeps_batch(scope: Scope, node: proto.NodeProto, shape: Shape, out: Shape) -> bool:
    """A Reshape whose shape copies the batch axis (0) or infers it (-1) from the rest alone;
    an Unsqueeze/Squeeze that leaves axis 0 alone; a Flatten on an axis > 0."""
    if shape[0] is not None or out[0] is not None:
        return False
    if is_op(node, "Flatten"):
        return int(get_attr(node, "axis", 1)) > 0
    if is_op(node, "Unsqueeze") or is_op(node, "Squeeze"):
        axes = get_attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            try:
                axes = np.asarray(scope.constant(node.input[1]).array()).reshape(-1).tolist()
            except NotConstant:
                return False
        if axes is None:  # Squeeze of every size-1 axis: the batch axis may be one
            return False
        rank = len(out) if is_op(node, "Unsqueeze") else len(shape)
        return all((int(a) + rank if int(a) < 0 else int(a)) != 0 for a in axes)
    try:
        dims = [int(d) for d in np.asarray(scope.constant(node.input[1]).array()).reshape(-1)]
    except (NotConstant, IndexError):
        return False
    if len(dims) != len(out):
        return False
    if dims[0] == 0:
        return not int(get_attr(node, "allowzero", 0))
    rest = dims[1:]
    return (
        dims[0] == -1
        and all(d > 0 for d in rest)
        and (
            int(np.prod(rest, dtype=np.int64))
            == int(np.prod([d for d in shape[1:] if d is not None], dtype=np.int64))
        )
    )


def _rank_n_matmul(scope: Scope, bn: BatchNorm, sub: Chain) -> list[tuple[Chain, FoldPlan]]:
    """B's columns scaled; the shift into the one bias Add after the MatMul, or a new Add."""
    matmul = sub.producer
    if not is_op(matmul, "MatMul"):
        raise Skip(Reason.SHAPE_MISMATCH, f"{describe(matmul)} does not give a 2-D output")
    b = dequantized.find(scope, matmul, 1, "B") or weight(scope, matmul, 1, "B")
    check_dtypes(scope, bn, b.elem_type)
    if len(b.shape) != 2 or b.shape[1] != bn.channels:
        raise Skip(
            Reason.NOT_PER_CHANNEL if len(b.shape) != 2 else Reason.SHAPE_MISMATCH,
            f"{describe(matmul)} has a B of shape {list(b.shape)}; it needs [K, {bn.channels}]",
        )
    if len(sub.through) > 1 or any(not is_op(n, "Add") for n in sub.through):
        raise Skip(
            Reason.UNSUPPORTED_PRODUCER,
            f"between {describe(matmul)} and the Reshape/Transpose there is "
            + ", ".join(n.op_type for n in reversed(sub.through))
            + "; only one bias Add can take the shift",
        )
    added = np.zeros(bn.channels, dtype=np.float64)
    if sub.through:
        const = sub.adds[0]
        added = _per_column(const.array(), bn.channels, const.name)
        if const.elem_type != b.elem_type:
            raise Skip(
                Reason.UNSUPPORTED_DTYPE,
                f"the bias '{const.name}' is {numerics.dtype_name(const.elem_type)}, "
                f"{describe(matmul)}'s B {numerics.dtype_name(b.elem_type)}",
            )
    if isinstance(b, Dequantized):  # B's columns through its scale, B itself unchanged
        into_scale = b.scaled(1, bn.s, sub.is_dirty)
        columns = FoldPlan([], branches=[(Chain(producer=b.node), into_scale)])
    else:
        new_b = rounded_scaled(b.array(), bn.s[None, :], b.elem_type, "B")
        columns = FoldPlan([TensorUpdate(1, new_b, b.elem_type, b.name)])
    bias = rounded(numerics.folded_bias(bn.s, added, bn.mean, bn.beta), b.elem_type, "bias")
    scaled = (Chain(producer=matmul), columns)
    if not sub.through:
        update = TensorUpdate(1, bias, b.elem_type, f"{matmul.name or b.name}_bias")
        return [(scaled[0], replace(scaled[1], add_after=update))]
    add = sub.through[0]
    index = list(add.input).index(sub.adds[0].name)
    biased = FoldPlan([TensorUpdate(index, bias, b.elem_type, sub.adds[0].name)])
    return [scaled, (Chain(producer=add), biased)]


def _per_column(values: np.ndarray, columns: int, name: str) -> np.ndarray:
    """A constant added to the MatMul output that broadcasts along its last axis only."""
    shape = tuple(values.shape)
    if any(d != 1 for d in shape[:-1]) or (shape and shape[-1] not in (1, columns)):
        raise Skip(
            Reason.NOT_PER_CHANNEL,
            f"the added constant '{name}' of shape {list(shape)} is not one value per column",
        )
    flat = numerics.to_float64_array(values).reshape(-1)
    return np.broadcast_to(flat, (columns,)).astype(np.float64)
