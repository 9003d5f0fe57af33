"""Concat -> BatchNormalization (YOLO's BottleneckCSP: ``bn(cat(cv3(...), cv2(x)))``): the BN
splits by channel slice into the layers the Concat joins.

Concat on the channel axis 1 puts input k's channels at [off_k, off_k + C_k) of the BN's input,
so BN(cat(L_0(u_0), ..., L_n(u_n))) = cat(BN_0(L_0(u_0)), ..., BN_n(L_n(u_n))) with BN_k the
slice of s, mean and beta at those channels; each BN_k folds into L_k by that layer's own rule.
All slices must fold, or nothing changes: a partial fold would leave the other slices
unnormalized. Each input must be a layer bnfold folds into (through Identity / constant Add),
read only by the Concat; the channel counts come from those layers' weights.

An input may itself be a Concat on the channel axis read only by this one (through Identity or
a per-channel constant Add, which moves the mean of its slice as an Add before the BN does):
cat(cat(a, b), c) = cat(a, b, c), so it is expanded into its inputs, at any depth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bnfold.fold.rules.base import FoldRule, IntoLayersRule
from bnfold.fold.rules.batchnorm import BatchNorm
from bnfold.fold.rules.chain import Chain, added_bias, walk_chain
from bnfold.fold.rules.plan import FoldPlan, RuleContext
from bnfold.fold.rules.reasons import Reason, Skip, describe
from bnfold.model import proto
from bnfold.model.graph import Scope
from bnfold.model.nodes import attr_is_reference, get_attr, is_op
from bnfold.numerics.arith import F64

#: Inner Concats one BN's split may expand at most. Real nests are a few deep (YOLO's C3 and
#: CSP blocks: 1-2); a "ladder" X_k = BN_k(Concat(X_{k-1}, conv_k)) would make each BN fold
#: into every earlier layer again, quadratic in its length: a small file could keep bnfold busy
#: for minutes. Past the bound the BN stays, and says so.
MAX_INNER_CONCATS = 8


@dataclass(frozen=True)
class _Input:
    """Input ``k`` (value ``name``) of ``concat``, a Concat that is the Concat before the BN
    (``parent`` None) or comes, through Identity / constant Add, into input ``parent`` of another
    one; linked, not a growing tuple, so a deep nest costs no more than its size."""

    k: int
    name: str
    concat: proto.NodeProto
    parent: _Input | None


@dataclass
class _Layer:
    """A layer whose output is a channel slice of the BN's input."""

    chain: Chain  # from the Concat that reads it back to the layer
    rule: FoldRule
    channels: int
    rank: int
    where: _Input


@dataclass
class _Inner:
    """A Concat whose output another one joins: expanded into its inputs ``layers[first:end]``."""

    chain: Chain  # from the Concat that reads it back to it
    where: _Input
    first: int
    end: int = 0


class ConcatBN(IntoLayersRule):
    op_types: tuple[str, ...] = ("Concat",)
    scale_refusal = "into its inputs"

    def plan(self, ctx: RuleContext, scope: Scope, bn: BatchNorm, chain: Chain) -> FoldPlan:
        concat = chain.producer
        _check_axis_attribute(concat, None)
        layers, inners = self._expand(ctx, scope, chain)
        ranks = {layer.rank for layer in layers}
        if len(ranks) != 1:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"the layers {describe(concat)} joins give outputs of ranks {sorted(ranks)}",
            )
        rank = ranks.pop()
        for node, where in [(concat, None), *((i.chain.producer, i.where) for i in inners)]:
            axis = int(get_attr(node, "axis", 1))
            if (axis + rank if axis < 0 else axis) != 1:
                feeds = f", which feeds {describe(where.concat)}," if where else ""
                raise Skip(
                    Reason.NOT_PER_CHANNEL,
                    f"{describe(node)}{feeds} joins rank-{rank} tensors along axis {axis}, not "
                    "the channel axis 1: a BN channel is not one layer's output channel",
                )
        total = sum(layer.channels for layer in layers)
        if total != bn.channels:
            raise Skip(
                Reason.SHAPE_MISMATCH,
                f"it has {bn.channels} channels but the layers {describe(concat)} joins "
                f"produce {total}",
            )
        # BN(x + a) = s * (x - (mean - a)) + beta: an Add between Concat and BN moves the mean,
        # and so does one between an inner Concat and the Concat that reads it, on its slice
        mean = bn.mean - added_bias(chain, rank, total)
        offsets = [0]
        for layer in layers:
            offsets.append(offsets[-1] + layer.channels)
        for inner in inners:
            part = slice(offsets[inner.first], offsets[inner.end])
            try:
                shift: F64 = added_bias(inner.chain, rank, part.stop - part.start)
            except Skip as skip:
                raise _at(skip, inner.where) from None
            mean[part] = mean[part] - shift
        branches: list[tuple[Chain, FoldPlan]] = []
        for k, layer in enumerate(layers):
            part = slice(offsets[k], offsets[k + 1])
            piece = replace(
                bn, x=layer.where.name, s=bn.s[part], mean=mean[part], beta=bn.beta[part]
            )
            try:
                branches.append((layer.chain, layer.rule.plan(ctx, scope, piece, layer.chain)))
            except Skip as skip:
                raise _at(skip, layer.where) from None
        names = ", ".join(
            f"{sub.producer.op_type} '{sub.producer.name or sub.producer.output[0]}'"
            for sub, _ in branches
        )
        joined = (
            " through " + ", ".join(describe(i.chain.producer) for i in inners) if inners else ""
        )
        note = (
            f"by channel slices into the {len(branches)} layers {describe(concat)} "
            f"joins{joined} ({names})"
        )
        # an inner Concat takes no weights: it writes the value the Concat after it reads (the
        # Identity / Add nodes between them go)
        branches += [(inner.chain, FoldPlan([])) for inner in inners]
        return FoldPlan([], branches=branches, note=note)

    def _expand(
        self, ctx: RuleContext, scope: Scope, chain: Chain
    ) -> tuple[list[_Layer], list[_Inner]]:
        """The layers the Concat joins, in channel order, with every inner Concat expanded into
        its inputs (depth first, without recursion: a model may nest them deep)."""
        layers: list[_Layer] = []
        inners: list[_Inner] = []
        ops = (*self.layers, "Concat")
        # (a Concat, the input it is or None, its next input to look at, its _Inner or None)
        stack: list[tuple[proto.NodeProto, _Input | None, int, _Inner | None]] = [
            (chain.producer, None, 0, None)
        ]
        while stack:
            concat, parent, k, inner = stack.pop()
            if k == len(concat.input):
                if inner is not None:
                    inner.end = len(layers)
                continue
            stack.append((concat, parent, k + 1, inner))
            here = _Input(k, concat.input[k], concat, parent)
            try:
                # each value on the way is read only by the node after it (else Skip): a tree
                sub = walk_chain(scope, concat, ops, chain.is_dirty, start=here.name)
                if is_op(sub.producer, "Concat"):
                    _check_axis_attribute(sub.producer, here)
                    if len(inners) == MAX_INNER_CONCATS:
                        raise Skip(
                            Reason.UNSUPPORTED_PRODUCER,
                            f"{describe(sub.producer)} is Concat number "
                            f"{MAX_INNER_CONCATS + 1} nested in it; bnfold expands at most "
                            f"{MAX_INNER_CONCATS} (each BN of a deeper nest would fold into "
                            "every layer before it again)",
                        )
                    found = _Inner(sub, here, first=len(layers))
                    inners.append(found)
                    stack.append((sub.producer, here, 0, found))
                    continue
                rule = self.layers[sub.producer.op_type]
                channels, rank = rule.output_channels(ctx, scope, sub.producer)
            except Skip as skip:
                raise _at(skip, here) from None
            layers.append(_Layer(sub, rule, channels, rank, here))
        return layers, inners


def _check_axis_attribute(concat: proto.NodeProto, where: _Input | None) -> None:
    if attr_is_reference(concat, ("axis",)):
        skip = Skip(
            Reason.FUNCTION_ATTRIBUTE,
            f"{describe(concat)} takes its axis from the function's attributes",
        )
        raise _at(skip, where) if where is not None else skip


def _at(skip: Skip, where: _Input) -> Skip:
    """The refusal of one input, said of the whole Concat before the BN (nothing is folded
    then); an input of an inner Concat is named with that Concat."""
    top = where
    while top.parent is not None:
        top = top.parent
    message = skip.message
    if where is not top:
        message = (
            f"inside it, input {where.k} '{where.name}' of {describe(where.concat)} cannot "
            f"either: {message}"
        )
    return Skip(
        skip.reason,
        f"input {top.k} '{top.name}' of the {describe(top.concat)} before it cannot take its "
        f"channels, so no input does: {message}",
    )
