"""The cleanup pass: remove the constants, constant subgraphs and value_info entries that the
folds, and only they, made unused. Names the input model already had unused stay."""

from __future__ import annotations

from bnfold.fold.driver import PassResult
from bnfold.fold.state import FoldState
from bnfold.model import proto
from bnfold.model.constfold import EVALUATORS
from bnfold.model.graph import ModelIndex, Scope
from bnfold.model.nodes import is_op


class Cleanup:
    name = "cleanup"

    def __init__(self, state: FoldState) -> None:
        self.state = state

    def __call__(self) -> PassResult:
        """Remove constants and value_info entries that the folds, and only they, made unused."""
        index = ModelIndex(self.state.model)
        scopes = {s.path: s for s in index.scopes}
        node_deletes: dict[str, set[int]] = {}
        init_deletes: dict[str, list[str]] = {}
        gone_uses: dict[tuple[str, str], int] = {}  # readers removed by this cleanup
        pending = list(self.state.released.constants)
        while pending:
            path, name = pending.pop()
            scope = scopes.get(path)
            if scope is None or name in scope.output_set:
                continue
            if scope.uses(name) - gone_uses.get((path, name), 0) > 0:
                continue
            producer_idx = scope.producer.get(name)
            if producer_idx is not None:
                node = scope.nodes[producer_idx]
                left = {o: scope.uses(o) - gone_uses.get((path, o), 0) for o in node.output if o}
                if producer_idx in node_deletes.get(path, ()) or not _removable(scope, node, left):
                    continue
                node_deletes.setdefault(path, set()).add(producer_idx)
                # What it read may now be unused too (the shape of a ConstantOfShape, ...).
                for source in node.input:
                    if source and scope.defines(source):
                        gone_uses[(path, source)] = gone_uses.get((path, source), 0) + 1
                        pending.append((path, source))
            elif name in scope.initializers:
                init_deletes.setdefault(path, []).append(name)
        for path, idxs in node_deletes.items():
            for i in sorted(idxs, reverse=True):
                del scopes[path].container[i]
        for path, names in init_deletes.items():
            graph = scopes[path].graph
            assert graph is not None
            gone = set(names)
            for i in reversed(range(len(graph.initializer))):
                if graph.initializer[i].name in gone:
                    del graph.initializer[i]
            # An IR < 4 model lists its initializers as inputs too: drop those entries with them.
            for i in reversed(range(len(graph.input))):
                if graph.input[i].name in gone:
                    del graph.input[i]
        stale: dict[str, set[str]] = {}  # value_info entries of values that no longer exist
        for path, name in self.state.released.values:
            scope = scopes.get(path)
            if scope is not None and not scope.defines(name) and name not in scope.output_set:
                stale.setdefault(path, set()).add(name)
        for path, stale_names in stale.items():
            graph = scopes[path].graph
            if graph is None:
                continue
            for i in reversed(range(len(graph.value_info))):
                if graph.value_info[i].name in stale_names:
                    del graph.value_info[i]
        return PassResult(bool(node_deletes or init_deletes or stale))


def _removable(scope: Scope, node: proto.NodeProto, readers_left: dict[str, int]) -> bool:
    """A node that only makes a constant, with no reader left for any output: safe to delete.
    (A DequantizeLinear too: one is released only when the layers that read its weight got their
    own copies of it.)"""
    makes_constant = node.op_type in (*EVALUATORS, "DequantizeLinear") and is_op(node, node.op_type)
    if not (is_op(node, "Constant") or makes_constant):
        return False
    return all(readers_left[o] <= 0 and o not in scope.output_set for o in readers_left)
