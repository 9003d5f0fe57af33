"""A small pass driver: each pass says whether it changed the model and what it decided.

After onnx-ir's PassManager/PassResult: passes run in order, repeatedly, until an iteration in
which none of them changes anything (a BN that becomes foldable only after another fold, as in
Concat -> BN after a Conv -> BN input, is folded in a later iteration; ``engine.pass_limit``
bounds how many a model can need).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bnfold.fold.report import BNDecision

#: (graph path, first output) of a node: stable across passes, unlike the node objects.
NodeKey = tuple[str, str]


@dataclass(frozen=True)
class PassResult:
    """Whether a pass changed the model, and the decisions it made (by node)."""

    modified: bool
    decisions: dict[NodeKey, BNDecision] = field(default_factory=dict)


class FoldPass(Protocol):
    """One pass over the whole model."""

    name: str

    def __call__(self) -> PassResult: ...


@dataclass(frozen=True)
class DriverResult:
    modified: bool
    iterations: int
    decisions: dict[NodeKey, BNDecision]
    #: the last iteration changed nothing (False: stopped at ``max_iterations``)
    converged: bool = True


def fixed_point(passes: Sequence[FoldPass], max_iterations: int) -> DriverResult:
    """Run ``passes`` in order until an iteration changes nothing (or ``max_iterations``);
    a later decision about a node replaces an earlier one."""
    decisions: dict[NodeKey, BNDecision] = {}
    modified = False
    for iteration in range(1, max_iterations + 1):
        changed = False
        for fold_pass in passes:
            result = fold_pass()
            decisions.update(result.decisions)
            changed = changed or result.modified
        modified = modified or changed
        if not changed:
            return DriverResult(modified, iteration, decisions)
    return DriverResult(modified, max_iterations, decisions, converged=False)
