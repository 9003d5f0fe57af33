"""The pass driver runs passes to a fixed point and keeps the latest decision per node."""

from __future__ import annotations

from bnfold.fold.driver import PassResult, fixed_point
from bnfold.fold.report import BNDecision


def decision(message: str) -> BNDecision:
    return BNDecision("bn", "y", "main", "skipped", "shared_output", message)


class Counting:
    """Changes the model on its first ``changes`` calls, deciding anew each time."""

    name = "counting"

    def __init__(self, changes: int) -> None:
        self.calls = 0
        self.changes = changes

    def __call__(self) -> PassResult:
        self.calls += 1
        return PassResult(
            self.calls <= self.changes, {("main", "y"): decision(f"call {self.calls}")}
        )


def test_runs_until_an_iteration_changes_nothing() -> None:
    first, second = Counting(3), Counting(1)
    result = fixed_point([first, second], max_iterations=10)
    assert (result.modified, result.iterations, result.converged) == (True, 4, True)
    assert (first.calls, second.calls) == (4, 4)
    assert result.decisions[("main", "y")].message == "call 4"  # the latest decision wins


def test_nothing_to_do_is_one_iteration_unmodified() -> None:
    result = fixed_point([Counting(0)], max_iterations=10)
    assert (result.modified, result.iterations) == (False, 1)


def test_stops_at_the_iteration_limit() -> None:
    endless = Counting(100)
    result = fixed_point([endless], max_iterations=5)
    assert (result.modified, result.iterations, endless.calls) == (True, 5, 5)
    assert not result.converged  # the engine treats this as a bug (see engine.pass_limit)
