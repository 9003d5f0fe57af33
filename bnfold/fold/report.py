"""The fold report: one decision per BatchNormalization, and totals.

Frozen dataclasses with ``to_dict()`` so the CLI can print them as JSON unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bnfold.model import proto

Status = Literal["folded", "skipped"]

#: What a decision is about, counted alike by fold, inspect, check and --json:
#: a BatchNormalization; a scale Mul/Add (a per-channel Mul, or an Add that shifts what a BN or
#: Mul made: a BatchNormalization written as Mul/Add); a bias Add (an Add of a constant right
#: after a layer, which goes into the layer's bias; ``check`` does not fail on one).
Kind = Literal["batchnorm", "scale", "bias"]
KINDS: tuple[Kind, ...] = ("batchnorm", "scale", "bias")
#: How people read each kind.
KIND_NAMES: dict[Kind, str] = {
    "batchnorm": "BatchNormalization",
    "scale": "scale Mul/Add",
    "bias": "bias Add",
}


@dataclass(frozen=True)
class Tally:
    """How many nodes of one kind there are, and how many of them fold."""

    folded: int
    total: int

    def to_dict(self) -> dict[str, int]:
        return {"folded": self.folded, "total": self.total}


@dataclass(frozen=True)
class BNDecision:
    """What happened to one BatchNormalization node (or per-channel Mul/Add), and why.

    ``reason`` is a stable machine-readable code (see ``bnfold.fold.rules.Reason``); ``message``
    is the same thing as a sentence for a person. ``op`` is the node's type: BatchNormalization,
    or Mul and Add for the per-channel scale layers that converters emit after a layer.
    """

    node: str
    output: str
    graph: str
    status: Status
    reason: str
    message: str
    producer: str | None = None
    producer_node: str | None = None
    through: tuple[str, ...] = ()
    op: str = "BatchNormalization"
    #: the data input of a scale Mul/Add (which layer output it scales or shifts); "" for a BN
    input: str = ""

    @property
    def folded(self) -> bool:
        return self.status == "folded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "output": self.output,
            "graph": self.graph,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "producer": self.producer,
            "producer_node": self.producer_node,
            "through": list(self.through),
            "op": self.op,
            "input": self.input,
        }


@dataclass(frozen=True)
class FoldReport:
    """Every decision in the model (BatchNormalization, then scale Mul/Add), with totals."""

    decisions: tuple[BNDecision, ...]
    nodes_before: int
    nodes_after: int
    #: bytes of folded weights that constant subgraphs computed at run time before (now stored
    #: as initializers), and of folded copies of weights other layers share (kept for them)
    materialized_bytes: int = 0
    copied_bytes: int = 0

    @property
    def total(self) -> int:
        """Decisions of every kind: BatchNormalization and per-channel Mul/Add."""
        return len(self.decisions)

    @property
    def bn_total(self) -> int:
        return sum(1 for d in self.decisions if d.op == "BatchNormalization")

    @property
    def bn_folded(self) -> int:
        return sum(1 for d in self.decisions if d.folded and d.op == "BatchNormalization")

    @property
    def folded(self) -> int:
        """Nodes folded away, of every kind."""
        return sum(1 for d in self.decisions if d.folded)

    @property
    def skipped(self) -> int:
        return self.total - self.folded

    @property
    def changed(self) -> bool:
        return self.folded > 0

    def kind(self, decision: BNDecision) -> Kind:
        """BatchNormalization, scale Mul/Add or bias Add (see ``Kind``)."""
        if decision.op == "BatchNormalization":
            return "batchnorm"
        if decision.op != "Add" or (decision.graph, decision.input) in self._normalized:
            return "scale"
        return "bias"

    @cached_property
    def _normalized(self) -> frozenset[tuple[str, str]]:
        """(graph, value) of every value a BatchNormalization or scale Mul makes."""
        return frozenset((d.graph, d.output) for d in self.decisions if d.op != "Add")

    def tally(self) -> dict[Kind, Tally]:
        """Folded and total per kind, every kind present (zero counts included)."""
        counts = {k: [0, 0] for k in KINDS}
        for d in self.decisions:
            tally = counts[self.kind(d)]
            tally[0] += d.folded
            tally[1] += 1
        return {k: Tally(folded, total) for k, (folded, total) in counts.items()}

    def gated(self) -> tuple[BNDecision, ...]:
        """The folded decisions ``check`` fails on: every BatchNormalization and scale Mul/Add,
        not a bias Add after a layer (MatMul + Add, as every Keras/TF export writes a Linear)."""
        return tuple(d for d in self.decisions if d.folded and self.kind(d) != "bias")

    def reasons(self) -> dict[str, int]:
        """Count of skipped BatchNormalizations per reason code."""
        counts: dict[str, int] = {}
        for d in self.decisions:
            if not d.folded:
                counts[d.reason] = counts.get(d.reason, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "bn_total": self.bn_total,
            "bn_folded": self.bn_folded,
            "folded": self.folded,
            "skipped": self.skipped,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "skip_reasons": self.reasons(),
            "counts": {k: t.to_dict() for k, t in self.tally().items()},
            "materialized_bytes": self.materialized_bytes,
            "copied_bytes": self.copied_bytes,
            "decisions": [{**d.to_dict(), "kind": self.kind(d)} for d in self.decisions],
        }


@dataclass(frozen=True)
class FoldResult:
    """The folded model and the report that says what changed in it."""

    model: proto.ModelProto = field(repr=False)
    report: FoldReport

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()
