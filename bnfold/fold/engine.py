"""``FoldEngine``: fold every foldable BatchNormalization of one model, in place, and report."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bnfold.fold.backward import BackwardFold
from bnfold.fold.cleanup import Cleanup
from bnfold.fold.driver import fixed_point
from bnfold.fold.forward import ForwardFold
from bnfold.fold.report import FoldReport
from bnfold.fold.rules import DEFAULT_RULES, FORWARD_RULES
from bnfold.fold.rules.base import FoldRule, ForwardRule
from bnfold.fold.state import FoldState
from bnfold.model import proto
from bnfold.model.graph import ModelIndex
from bnfold.model.nodes import is_op
from bnfold.model.store import TensorStore


def count_nodes(model: proto.ModelProto) -> int:
    """Nodes in the main graph, every subgraph and every local function."""
    return sum(len(scope.nodes) for scope in ModelIndex(model).scopes)


def pass_limit(model: proto.ModelProto) -> int:
    """How many iterations of the fold pass the model can need, at most.

    An iteration that changes the model folds at least one BatchNormalization or scale Mul/Add
    and deletes it; the only node a fold adds, besides Constants, is one bias Add in place of a
    BN (a MatMul's, behind a Reshape). So ``2 * BNs + Muls + Adds`` falls by at least one in
    every iteration that changes something, and one more iteration finds nothing to do. (No
    fixed cap: a chain of n BNs once needed n iterations and stopped at 64, with BNs left.)
    """
    weight = {"BatchNormalization": 2, "Mul": 1, "Add": 1}
    return 1 + sum(
        weight.get(node.op_type, 0) if is_op(node, node.op_type) else 0
        for scope in ModelIndex(model).scopes
        for node in scope.nodes
    )


class FoldEngine:
    """Folds every foldable BatchNormalization of one model, in place.

    With a ``store`` (the model was opened from a file by ``model.reading.open_model_file``),
    weights are read from where the store says and folded ones stay arrays in it until the writer
    puts them in the output file; without one, the model's protos hold every value.
    """

    def __init__(
        self,
        model: proto.ModelProto,
        rules: Sequence[FoldRule] = DEFAULT_RULES,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        forward_rules: Sequence[ForwardRule] = FORWARD_RULES,
        store: TensorStore | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.state = FoldState(model, rules, forward_rules, base_dir=base_dir, store=store)
        #: iterations of the fold pass the last ``run`` took (the last one changes nothing)
        self.passes = 0

    def run(self) -> FoldReport:
        try:
            nodes_before = count_nodes(self.model)
            self.state.plan_calls()
            fold = BackwardFold(self.state, ForwardFold(self.state))
            limit = pass_limit(self.model)
            result = fixed_point([fold], limit)
            if not result.converged:  # pass_limit says why this cannot happen: a bnfold bug
                raise RuntimeError(
                    f"bnfold bug: the fold still changed the model after {limit} passes"
                )
            self.passes = result.iterations
            decisions = result.decisions
            if self.state.calls is not None:
                decisions = self.state.calls.settle(
                    self.model, decisions, self.state.released.constants
                )
            if result.modified:
                Cleanup(self.state)()
            # graph order (a Mul folded in a later pass is listed where it stood)
            positions = self.state.positions
            last = (len(positions), 0)
            ordered = sorted(decisions.items(), key=lambda kv: positions.get(kv[0], last))
            return FoldReport(
                decisions=tuple(decision for _, decision in ordered),
                nodes_before=nodes_before,
                nodes_after=count_nodes(self.model) if result.modified else nodes_before,
                materialized_bytes=self.state.materialized_bytes,
                copied_bytes=self.state.copied_bytes,
            )
        finally:
            if self.store is not None:
                self.store.release_pages()
