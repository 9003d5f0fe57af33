"""The calls of model-local functions as the fold sees them: the groups of calls that pass the
same constants, what a function body is bound to, the limits on copies, and small helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from bnfold.model import proto
from bnfold.model.graph import Scope
from bnfold.model.nodes import is_op

#: Copies of functions bnfold makes at most in one model.
MAX_COPIES = 1024


#: Bytes of function bodies it copies at most in one model.
MAX_COPY_BYTES = 64 << 20


#: Bytes of constants that more than one copy (or a copy and the function) fold each on their
#: own at most: each makes its own folded tensors, so these grow the output.
MAX_SHARED_BYTES = 256 << 20


#: The suffix of a copy's name (made unique among the model's function names and op types).
COPY_SUFFIX = "_bnfolded"


NON_CONSTANT = ("non_constant_param", "non_constant_weight")


FunctionKey = tuple[str, str, str]  # domain, name, overload


@dataclass
class CallGroup:
    """Calls of one function, in one graph, that pass the same constants for the inputs its body
    reads; they are served by the function itself (``copy`` False) or by a copy of it."""

    origin: str  # scope path of the function as the model has it
    origin_key: FunctionKey
    function: str  # scope path of the function that serves the calls: origin, or the copy
    name: str  # that function's name
    caller: str  # scope path of the graph the calls are in
    calls: tuple[str, ...]  # the first output of each call (its key in the caller)
    binding: dict[str, str]  # formal input -> the constant (a name in the caller) passed for it
    arity: tuple[int, ...]  # each call's input count as it came in
    read: frozenset[str]  # the formal inputs the body read as it came in
    copy: bool
    shown: tuple[str, ...] = ()  # the calls, for messages
    threaded: set[str] = field(default_factory=set)  # inputs added for folded tensors


@dataclass
class Bound:
    """A function body folded with constants bound to its inputs, in one index: the graph its
    calls are in, and the call nodes (in graph order)."""

    caller: Scope
    calls: list[proto.NodeProto]
    group: CallGroup


def call_key(node: proto.NodeProto) -> FunctionKey:
    return (node.domain, node.op_type, node.overload)


def function_key(func: proto.FunctionProto) -> FunctionKey:
    return (func.domain, func.name, func.overload)


def function_name(func: proto.FunctionProto) -> str:
    return f"{func.domain}.{func.name}" if func.domain else func.name


def describe_call(node: proto.NodeProto) -> str:
    return f"'{node.name}'" if node.name else f"{node.op_type} -> '{node.output[0]}'"


def where_is(path: str) -> str:
    if path == "main":
        return "the main graph"
    if path.startswith("function:") and "/" not in path:
        return f"function {path[len('function:') :]}"
    return f"graph {path}"


def prefixes(path: str) -> list[str]:
    """``path`` and every path it lies within: "a/b/c" -> ["a", "a/b", "a/b/c"]."""
    cuts = [i for i, ch in enumerate(path) if ch == "/"]
    return [path[:i] for i in cuts] + [path]


def root_of(path: str, labels: set[str] | dict[str, object]) -> str | None:
    """The label among ``labels`` that ``path`` is (or lies within, the nearest), if any."""
    return next((p for p in reversed(prefixes(path)) if p in labels), None)


def has_batchnorm(scope: Scope) -> bool:
    return any(is_op(n, "BatchNormalization") for n in scope.nodes) or any(
        has_batchnorm(child) for child in scope.children
    )


def calls_functions(scope: Scope, keys: set[FunctionKey]) -> bool:
    return any(call_key(n) in keys for n in scope.nodes) or any(
        calls_functions(child, keys) for child in scope.children
    )


def nbytes(scope: Scope, name: str) -> int:
    """Bytes of constant ``name`` as seen from ``scope``, from its shape (its data unread)."""
    const = scope.constant(name)
    dtype = proto.raw_dtype(const.elem_type)
    count = 1
    for d in const.shape:
        count *= max(int(d), 0)
    return count * (dtype.itemsize if dtype is not None else 4)


def defining_scope(scope: Scope, name: str) -> Scope:
    """The scope (``scope`` or one around it) where ``name`` is defined."""
    found: Scope | None = scope
    while found is not None and not found.defines(name):
        found = found.parent
    return found if found is not None else scope


@dataclass
class Site:
    caller: Scope
    node: proto.NodeProto
    binding: dict[str, str]  # formal -> constant argument
    why: dict[str, tuple[str, str]]  # formal -> (argument, why it is not a constant)


def described_for(group: CallGroup) -> str:
    """ "the constants that the call 'c' in the main graph passes" (or calls)."""
    shown = ", ".join(group.shown[:3]) + (", ..." if len(group.shown) > 3 else "")
    if len(group.shown) == 1:
        return f"the constants that the call {shown} in {where_is(group.caller)} passes"
    return f"the constants that the calls {shown} in {where_is(group.caller)} pass"


def remove_function(model: proto.ModelProto, key: FunctionKey) -> None:
    for i in reversed(range(len(model.functions))):
        if function_key(model.functions[i]) == key:
            del model.functions[i]
