"""``FoldEngine``: fold every foldable BatchNormalization of one model, in place, and report."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bnfold import proto
from bnfold.fold.backward import BackwardFold
from bnfold.fold.cleanup import Cleanup
from bnfold.fold.driver import fixed_point
from bnfold.fold.forward import ForwardFold
from bnfold.fold.state import FoldState
from bnfold.graph import ModelIndex
from bnfold.report import FoldReport
from bnfold.rules import DEFAULT_RULES, FORWARD_RULES, FoldRule, ForwardRule
from bnfold.store import TensorStore

#: Iterations of the fold pass at most (a chain of n BNs needs n).
MAX_PASSES = 64


def count_nodes(model: proto.ModelProto) -> int:
    """Nodes in the main graph, every subgraph and every local function."""
    return sum(len(scope.nodes) for scope in ModelIndex(model).scopes)


class FoldEngine:
    """Folds every foldable BatchNormalization of one model, in place.

    With a ``store`` (the model was opened from a file, ``modelio.open_model_file``), weights
    are read from where the store says and folded ones stay arrays in it until the writer puts
    them in the output file; without one, the model's protos hold every value.
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

    def run(self) -> FoldReport:
        try:
            nodes_before = count_nodes(self.model)
            self.state.plan_calls()
            fold = BackwardFold(self.state, ForwardFold(self.state))
            result = fixed_point([fold], MAX_PASSES)
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
            )
        finally:
            if self.store is not None:
                self.store.release_pages()
