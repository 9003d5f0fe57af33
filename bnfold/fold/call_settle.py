"""After the fold passes: each group of calls is pointed at the function folded for it (or its
copy is undone), the inputs the folds consumed are dropped from the function and its calls, the
functions no call is left to go, and each decision says which calls it was folded for."""

from __future__ import annotations

from dataclasses import replace

from bnfold.fold.call_sites import (
    NON_CONSTANT,
    CallGroup,
    call_key,
    defining_scope,
    described_for,
    remove_function,
    root_of,
)
from bnfold.fold.driver import NodeKey
from bnfold.fold.report import BNDecision
from bnfold.model import proto
from bnfold.model.graph import ModelIndex, Scope


def settle(
    groups: list[CallGroup],
    notes: dict[str, dict[str, str]],
    model: proto.ModelProto,
    decisions: dict[NodeKey, BNDecision],
    released: dict[tuple[str, str], None],
) -> dict[NodeKey, BNDecision]:
    """Point each group's calls at the function folded for them, or undo the copy; drop the
    inputs the folds consumed and the functions no call is left to; return the decisions
    about what remains, each saying which calls it was folded for."""
    index = ModelIndex(model)
    scopes = {s.path: s for s in index.scopes}
    labels = {g.function for g in groups} | {g.origin for g in groups}
    within: dict[str, list[tuple[NodeKey, BNDecision]]] = {}  # function -> its decisions
    for key, d in decisions.items():
        root = root_of(key[0], labels)
        if root is not None:
            within.setdefault(root, []).append((key, d))

    def folded(label: str) -> set[tuple[str, str]]:
        return {(path[len(label) :], out) for (path, out), d in within.get(label, ()) if d.folded}

    adopted: list[CallGroup] = []
    dropped: list[CallGroup] = []
    for group in groups:
        caller = scopes[group.caller]
        calls = [caller.producer_of(out) for out in group.calls]
        if group.copy and not folded(group.function) - folded(group.origin):
            for call, arity in zip(calls, group.arity, strict=True):
                assert call is not None
                for arg in call.input[arity:]:
                    if arg:
                        released[(caller.path, arg)] = None  # a tensor made for the copy
                del call.input[arity:]
            remove_function(model, (group.origin_key[0], group.name, group.origin_key[2]))
            dropped.append(group)
            continue
        if group.copy:
            for call in calls:
                assert call is not None
                call.op_type = group.name
        if folded(group.function):
            adopted.append(group)
            _drop_inputs(scopes[group.function], caller, calls, group, released)
    gone = [g.function for g in dropped]
    called = {call_key(n) for s in index.scopes for n in s.nodes}
    for group in groups:
        if group.copy and group.origin_key not in called and group.origin not in gone:
            remove_function(model, group.origin_key)
            gone.append(group.origin)
    return _decisions(notes, decisions, within, adopted, dropped, gone)


def _drop_inputs(
    fn: Scope,
    caller: Scope,
    calls: list[proto.NodeProto | None],
    group: CallGroup,
    released: dict[tuple[str, str], None],
) -> None:
    """Remove the bound inputs no node of the function reads any more (a fold consumed
    them), from the function and from each of its calls."""
    func = fn.function
    assert func is not None
    unread = [
        i
        for i, formal in enumerate(func.input)
        if formal in group.binding
        and (formal in group.read or formal in group.threaded)
        and fn.uses(formal) == 0
    ]
    gone = {func.input[i] for i in unread}
    for i in reversed(unread):
        del func.input[i]
        for call in calls:
            assert call is not None
            if i < len(call.input):
                arg = call.input[i]
                del call.input[i]
                if arg:
                    released[(defining_scope(caller, arg).path, arg)] = None
    for k in reversed(range(len(func.value_info))):
        if func.value_info[k].name in gone:
            del func.value_info[k]


def _decisions(
    notes: dict[str, dict[str, str]],
    decisions: dict[NodeKey, BNDecision],
    within: dict[str, list[tuple[NodeKey, BNDecision]]],
    adopted: list[CallGroup],
    dropped: list[CallGroup],
    gone: list[str],
) -> dict[NodeKey, BNDecision]:
    out = dict(decisions)
    # a copy that was not kept: its calls stay with the function, and when nothing else
    # stands in the function's way (no call passes a run-time value), what stood in the
    # copy's way is what the function's BatchNormalization is told
    told: set[NodeKey] = set()
    for group in dropped:
        if group.origin in gone or group.origin in notes:
            continue
        for (path, output), d in within.get(group.function, ()):
            if d.folded:
                continue
            key = (group.origin + path[len(group.function) :], output)
            mine = out.get(key)
            if mine is not None and mine.reason in NON_CONSTANT and key not in told:
                told.add(key)
                # a run-time input already names its call; any other reason is about constants
                message = (
                    d.message
                    if d.reason in NON_CONSTANT
                    else (f"{d.message} (with {described_for(group)})")
                )
                out[key] = replace(d, graph=key[0], message=message)
    for group in adopted:
        for key, d in within.get(group.function, ()):
            if d.folded:
                where = f"with {described_for(group)}"
                if group.copy:
                    where = f"in {group.name}, a copy of the function for {described_for(group)}"
                out[key] = replace(d, message=f"{d.message} ({where})")
    removed = set(gone)
    return {key: d for key, d in out.items() if root_of(key[0], removed) is None}
