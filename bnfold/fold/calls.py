"""Model-local functions whose BatchNormalization reads its parameters (or its layer its weight)
from the function's inputs: folded per call, with the constants the calls pass.

Inside such a function the parameters are formal inputs, not constants, so the BN cannot fold
there as such. onnxruntime and onnxscript inline the calls and then fold. bnfold specialises
instead: the calls of a function that pass the same constants (same caller, same arguments) form
a group, and the function is folded *with those constants bound to its inputs*:

- one group among all the calls of a function: the function itself is folded so;
- several groups (different constants, or calls that pass values known only at run time): each
  group that passes constants gets its own copy of the function (a new, unique name; the same
  domain, opset imports, attributes and body), folded with its constants; the calls of a group
  are pointed at their copy only if a BatchNormalization folds there that does not fold in the
  function itself; otherwise the copy is dropped. The function stays, unchanged, for the calls
  left to it, and goes only when no call remains.

What a fold computes is not put into the function: each folded weight and bias becomes a new
tensor beside the calls (an initializer of the calling graph, so a main-graph weight stays in
the store, and external data stays external), passed to the function as a new input; the inputs
whose constants the folds consumed are then dropped from the function and from its calls.

Why not inline (what onnxruntime does): an inlined body would need its values renamed
model-wide, its attribute references resolved (in nested subgraphs too), its opset imports
reconciled with the calling graph's, and it would turn calls into loose nodes. Specialising
keeps every call a call, every name and attribute reference as it was, and changes nothing
where nothing folds. Attribute references stay references (the calls keep their attributes);
a BatchNormalization or layer whose folding depends on one is refused as before
(``function_attribute``). A function that calls other model-local functions is folded for its
calls only when they all pass the same constants (it is never copied, so the calls inside it
keep one caller each); a call whose arguments are inputs of the calling function is left alone,
with a reason that names it.
"""

from __future__ import annotations

from collections import Counter

from bnfold.fold import call_settle
from bnfold.fold.call_sites import (
    COPY_SUFFIX,
    MAX_COPIES,
    MAX_COPY_BYTES,
    MAX_SHARED_BYTES,
    Bound,
    CallGroup,
    FunctionKey,
    Site,
    call_key,
    calls_functions,
    defining_scope,
    describe_call,
    function_key,
    function_name,
    has_batchnorm,
    nbytes,
    prefixes,
    where_is,
)
from bnfold.fold.driver import NodeKey
from bnfold.fold.report import BNDecision
from bnfold.model import proto
from bnfold.model.graph import Constant, ModelIndex, NotConstant, Scope
from bnfold.model.names import NameAllocator
from bnfold.model.nodes import DEFAULT_DOMAINS, function_label


class CallPlan:
    """The groups of calls bnfold folds functions for, and what it says about the others."""

    def __init__(self, paths: set[str] | None = None) -> None:
        #: the scope paths the model has, and the paths they lie within (a copy's must be new)
        self.paths = paths if paths is not None else set()
        #: scope path -> (node output, where the node stood) of its nodes
        self.positions_in: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        self.groups: list[CallGroup] = []
        #: function scope path -> formal input -> why the function cannot be folded with a
        #: constant for it (the call that passes no constant, or why its constants are not used)
        self.notes: dict[str, dict[str, str]] = {}
        self.copies = 0
        self.copy_bytes = 0
        self.shared_bytes = 0
        self._bound_constants: set[tuple[str, str]] = set()

    # -- before folding --------------------------------------------------------------------------

    @classmethod
    def make(
        cls,
        model: proto.ModelProto,
        index: ModelIndex,
        names: NameAllocator,
        positions: dict[NodeKey, tuple[int, int]],
    ) -> CallPlan | None:
        """Group the calls of every model-local function that has a BatchNormalization, and copy
        the functions whose calls pass different constants. None when there is nothing to do."""
        functions: dict[FunctionKey, tuple[proto.FunctionProto, Scope]] = {}
        repeated: set[FunctionKey] = set()
        for scope in index.scopes:
            func = scope.function
            if func is None:
                continue
            key = function_key(func)
            if key in functions:
                repeated.add(key)
            functions[key] = (func, scope)
        for key in repeated:  # two functions with one identity: which one a call runs is unclear
            del functions[key]
        # scopes are told apart by their paths: where two share one (two If nodes of one name,
        # two overloads of a function), bnfold leaves the calls alone
        paths = Counter(scope.path for scope in index.scopes)
        ambiguous = {path for path, count in paths.items() if count > 1}
        local = set(functions)
        candidates = {
            key: found
            for key, found in functions.items()
            if key[0] not in DEFAULT_DOMAINS
            and found[1].path not in ambiguous
            and has_batchnorm(found[1])
        }
        if not candidates:
            return None
        sites: dict[FunctionKey, list[tuple[Scope, proto.NodeProto]]] = {}
        for scope in index.scopes:
            for node in scope.nodes:
                key = call_key(node)
                if key in candidates:
                    sites.setdefault(key, []).append((scope, node))
        plan = cls({prefix for path in paths for prefix in prefixes(path)})
        for (path, out), where in positions.items():
            plan.positions_in.setdefault(path, []).append((out, where))
        taken = set(names.taken) | {f.name for f in model.functions}
        taken |= {n.op_type for scope in index.scopes for n in scope.nodes}
        function_names = NameAllocator(taken)
        for key, (func, scope) in candidates.items():
            calls = sites.get(key)
            if calls and not any(caller.path in ambiguous for caller, _ in calls):
                plan._plan_function(model, func, scope, calls, local, function_names, positions)
        if not plan.groups and not plan.notes:
            return None
        for group in plan.groups:
            if group.copy:
                names.taken.add(group.name)
        return plan

    def _plan_function(
        self,
        model: proto.ModelProto,
        func: proto.FunctionProto,
        scope: Scope,
        calls: list[tuple[Scope, proto.NodeProto]],
        local: set[FunctionKey],
        function_names: NameAllocator,
        positions: dict[NodeKey, tuple[int, int]],
    ) -> None:
        formals = list(func.input)
        if len(set(formals)) != len(formals) or "" in formals:
            return
        for caller, node in calls:
            if (
                not node.output
                or not node.output[0]
                or len(node.input) > len(formals)
                or caller.producer_of(node.output[0]) is not node
            ):
                return  # a call bnfold cannot tell apart or that does not fit: leave them all
        read = frozenset(f for f in formals if scope.uses(f) > 0)
        sites = [self._site(caller, node, formals, read) for caller, node in calls]
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Site]] = {}
        for site in sites:
            key = (site.caller.path, tuple(sorted(site.binding.items())))
            groups.setdefault(key, []).append(site)
        fname = function_name(func)
        stays: list[Site] = [s for s in sites if not s.binding]  # calls the function keeps
        refused: dict[int, str] = {}  # id(site) -> why its constants are not used
        with_constants = [members for members in groups.values() if members[0].binding]
        if len(groups) == 1 and with_constants:
            members = with_constants[0]
            why = self._shared(members[0])
            if not why:
                self._count_bound(members[0])
                group = self._group(func, scope, scope.path, func.name, members, read, copy=False)
                self.groups.append(group)
                self._note(scope.path, fname, members, {})
                return
            stays.extend(members)
            refused.update((id(s), why) for s in members)
            with_constants = []
        copyable = not calls_functions(scope, local)
        body_bytes = func.ByteSize()
        made: list[str] = []
        for members in with_constants:
            why = self._refusal(members[0], copyable, body_bytes)
            if why:
                stays.extend(members)
                refused.update((id(s), why) for s in members)
                continue
            self._count_bound(members[0])
            self.copies += 1
            self.copy_bytes += body_bytes
            label, name = self._copy(model, func, scope, function_names, positions, made)
            self.groups.append(self._group(func, scope, label, name, members, read, copy=True))
            self._note(label, fname, members, {})
        self._note(scope.path, fname, stays, refused)

    def _copy(
        self,
        model: proto.ModelProto,
        func: proto.FunctionProto,
        scope: Scope,
        function_names: NameAllocator,
        positions: dict[NodeKey, tuple[int, int]],
        made: list[str],
    ) -> tuple[str, str]:
        """Add a copy of ``func`` under a new name after it and its earlier copies (``made``);
        its nodes are listed in the report where the function's are. (label, name)."""
        copy = proto.FunctionProto()
        copy.CopyFrom(func)
        copy.name = function_names.new(func.name + COPY_SUFFIX)
        while function_label(copy) in self.paths:
            copy.name = function_names.new(func.name + COPY_SUFFIX)
        own = function_key(func)
        at = next(i for i, f in enumerate(model.functions) if function_key(f) == own)
        model.functions.insert(at + 1 + len(made), copy)
        made.append(copy.name)
        label = function_label(copy)
        self.paths.add(label)
        todo = [scope]
        while todo:  # the function body and the graphs in it
            inner = todo.pop()
            todo.extend(inner.children)
            rest = inner.path[len(scope.path) :]
            for out, where in self.positions_in.get(inner.path, ()):
                positions[(label + rest, out)] = where
        return label, copy.name

    def _refusal(self, site: Site, copyable: bool, body_bytes: int) -> str:
        if not copyable:
            return (
                "its calls pass different values, and bnfold does not copy a function that calls "
                "other model-local functions (the calls inside it would get a second caller)"
            )
        if self.copies >= MAX_COPIES or self.copy_bytes + body_bytes > MAX_COPY_BYTES:
            return (
                f"bnfold makes at most {MAX_COPIES} copies of functions per model, "
                f"{MAX_COPY_BYTES >> 20} MiB in all, and has made them"
            )
        return self._shared(site)

    def _shared(self, site: Site) -> str:
        """Why folding the constants of ``site`` once more would grow the output too much."""
        shared = sum(
            nbytes(site.caller, arg)
            for arg in site.binding.values()
            if self._identity(site.caller, arg) in self._bound_constants
        )
        if self.shared_bytes + shared > MAX_SHARED_BYTES:
            return (
                "other calls fold some of the same constants already, and folding them once more "
                f"for this call would add more than {MAX_SHARED_BYTES >> 20} MiB of folded tensors"
            )
        self.shared_bytes += shared
        return ""

    @staticmethod
    def _identity(caller: Scope, arg: str) -> tuple[str, str]:
        return (defining_scope(caller, arg).path, arg)

    def _count_bound(self, site: Site) -> None:
        self._bound_constants.update(self._identity(site.caller, a) for a in site.binding.values())

    @staticmethod
    def _site(
        caller: Scope, node: proto.NodeProto, formals: list[str], read: frozenset[str]
    ) -> Site:
        binding: dict[str, str] = {}
        why: dict[str, tuple[str, str]] = {}
        for i, formal in enumerate(formals):
            if formal not in read:
                continue
            arg = node.input[i] if i < len(node.input) else ""
            if not arg:
                why[formal] = ("", "")
                continue
            try:
                caller.constant(arg)
            except NotConstant as exc:
                why[formal] = (arg, str(exc))
                continue
            binding[formal] = arg
        return Site(caller, node, binding, why)

    @staticmethod
    def _group(
        func: proto.FunctionProto,
        scope: Scope,
        label: str,
        name: str,
        members: list[Site],
        read: frozenset[str],
        *,
        copy: bool,
    ) -> CallGroup:
        members = sorted(members, key=lambda s: s.caller.index_of(s.node))
        return CallGroup(
            origin=scope.path,
            origin_key=function_key(func),
            function=label,
            name=name,
            caller=members[0].caller.path,
            calls=tuple(s.node.output[0] for s in members),
            binding=dict(members[0].binding),
            arity=tuple(len(s.node.input) for s in members),
            read=read,
            copy=copy,
            shown=tuple(describe_call(s.node) for s in members),
        )

    def _note(self, label: str, fname: str, sites: list[Site], refused: dict[int, str]) -> None:
        """For each input some call passes no usable constant for: which call, and why."""
        notes: dict[str, str] = {}
        formals = sorted({f for s in sites for f in (*s.why, *s.binding)})
        for formal in formals:
            plain = [s for s in sites if formal in s.why]
            held = [s for s in sites if formal in s.binding and id(s) in refused]
            if plain:
                site, others = plain[0], len(plain) - 1
                arg, why = site.why[formal]
                call = f"the call {describe_call(site.node)} in {where_is(site.caller.path)}"
                if arg:
                    text = (
                        f"it is an input of function {fname}, and {call} passes '{arg}' for "
                        f"it, which is not a constant: {why}"
                    )
                else:
                    text = f"it is an input of function {fname}, and {call} passes nothing for it"
                if others:
                    text += f" (so do {others} other call{'s' if others > 1 else ''})"
            elif held:
                site = held[0]
                text = (
                    f"it is an input of function {fname}; the call {describe_call(site.node)} in "
                    f"{where_is(site.caller.path)} passes the constant '{site.binding[formal]}' "
                    f"for it, but {refused[id(site)]}"
                )
            else:
                continue
            notes[formal] = text
        if notes:
            self.notes[label] = notes

    # -- while folding ---------------------------------------------------------------------------

    def attach(self, index: ModelIndex) -> dict[str, Bound]:
        """Bind each group's constants to the inputs of its function in a new index (all are
        looked up before any is bound: one binding never depends on another)."""
        scopes = {s.path: s for s in index.scopes}
        found: list[tuple[Scope, Bound, dict[str, Constant]]] = []
        for group in self.groups:
            fn, caller = scopes.get(group.function), scopes.get(group.caller)
            if fn is None or caller is None or fn.function is None:
                continue
            nodes = [caller.producer_of(out) for out in group.calls]
            calls = [n for n in nodes if n is not None]
            if len(calls) != len(nodes):
                continue
            consts: dict[str, Constant] = {}
            for formal, arg in list(group.binding.items()):
                try:
                    consts[formal] = caller.constant(arg)
                except NotConstant:
                    continue
            found.append((fn, Bound(caller, calls, group), consts))
        bound: dict[str, Bound] = {}
        for fn, info, consts in found:
            fn.bindings = consts
            bound[fn.path] = info
        for label, notes in self.notes.items():
            if label in scopes:
                scopes[label].unbound = notes
        return bound

    @staticmethod
    def thread(bound: Bound, scope: Scope, name: str) -> None:
        """Make ``name`` (a new tensor beside the calls) a new input of the function, passed by
        each of its calls, and bound to that tensor in later passes."""
        func = scope.function
        assert func is not None
        count = len(func.input)
        func.input.append(name)
        for call in bound.calls:
            while len(call.input) < count:
                call.input.append("")
            call.input.append(name)
        bound.group.binding[name] = name
        bound.group.threaded.add(name)

    # -- after folding ---------------------------------------------------------------------------

    def settle(
        self,
        model: proto.ModelProto,
        decisions: dict[NodeKey, BNDecision],
        released: dict[tuple[str, str], None],
    ) -> dict[NodeKey, BNDecision]:
        """Point each group's calls at the function folded for them, or undo the copy; drop the
        inputs the folds consumed and the functions no call is left to; return the decisions
        about what remains, each saying which calls it was folded for (see ``call_settle``)."""
        return call_settle.settle(self.groups, self.notes, model, decisions, released)
