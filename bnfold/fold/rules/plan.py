"""What a rule returns (a ``FoldPlan`` of new tensors for the layer) and what it may ask of the
engine (``RuleContext``: shapes and ranks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bnfold.model import proto
from bnfold.model.graph import Scope, Shape
from bnfold.numerics import arith as numerics

if TYPE_CHECKING:  # chain.py imports dequantized.py, which imports this module
    from bnfold.fold.rules.chain import Chain


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
    #: the node this plan is for is also read by others: the plan goes to a copy of it that only
    #: this node reads (a DequantizeLinear shared by several layers)
    private_for: proto.NodeProto | None = None


class RuleContext(Protocol):
    """What a rule may ask of the engine beyond the scope's own index."""

    def rank(self, scope: Scope, name: str) -> int | None: ...

    def shape(self, scope: Scope, name: str) -> Shape | None: ...


class Weight(Protocol):
    """What a layer rule's ``layout`` reads of the layer's weight: a ``Constant``, or the float
    output of a DequantizeLinear (``bnfold.fold.rules.dequantized.Dequantized``)."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def elem_type(self) -> int: ...
