"""The samples verification compares on, and the sizes tried when the original does not run at
the default ones: a detector whose feature maps must divide by 32 fails to broadcast at 16, so
32, 64, 128 and 224 are tried (in onnxruntime, bounded by input size and half the timeout)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.runtime.inputs import (
    DEFAULT_DIM,
    LARGER_DIMS,
    MAX_TRIED_ELEMENTS,
    InputSpec,
    has_unknown_dims,
    make_feeds,
    resolve_shapes,
)
from bnfold.runtime.serve import BackendError
from bnfold.verification.compare import Runner

Feed = dict[str, np.ndarray]


@dataclass
class Samples:
    """The samples to compare on, each with the original's outputs on it (computed as they are
    iterated, one sample in memory), the shapes they have, and notes on how they were chosen."""

    runs: Iterator[tuple[Feed, list[np.ndarray]]]
    shapes: dict[str, tuple[int, ...]]
    notes: list[str]
    enlarged: int | None = None  # the size unknown dims were run at, when not DEFAULT_DIM


def _run_original(run_a: Runner, feed: Feed, notes: Sequence[str]) -> list[np.ndarray]:
    """The original's outputs on ``feed``; a failure says which default shapes it ran at."""
    try:
        return run_a(feed)
    except BackendError as exc:
        if notes:
            raise BackendError(f"{exc} [{'; '.join(notes)}]") from None
        raise


def _runs(
    first: Feed, ran: list[np.ndarray], feeds: Iterator[Feed], run_a: Runner, notes: list[str]
) -> Iterator[tuple[Feed, list[np.ndarray]]]:
    yield first, ran
    del first, ran
    for feed in feeds:
        ran = _run_original(run_a, feed, notes)
        yield feed, ran
        del feed, ran  # one sample in memory: gone before the next is made


def samples_for(specs: Sequence[InputSpec], run_a: Runner, request: dict[str, Any]) -> Samples:
    """Make the samples and run the original on the first one.

    When the original does not run with unknown dimensions at ``DEFAULT_DIM`` (a detector whose
    feature maps must divide by 32 fails to broadcast at 16), larger sizes are tried in order
    (``LARGER_DIMS``), each a run of the original on one sample, until one runs; the samples are
    then made at that size. A model that runs at none fails as it did at the default.
    """
    started = time.monotonic()

    def make(
        dim: int, why: str = "default for unknown dims"
    ) -> tuple[Iterator[Feed], dict[str, tuple[int, ...]], list[str]]:
        return make_feeds(
            specs,
            input_shapes=request["input_shapes"] or None,
            inputs=request["inputs"],
            samples=request["samples"],
            seed=request["seed"],
            default_dim=dim,
            why=why,
        )

    feeds, shapes, notes = make(DEFAULT_DIM)
    first = next(feeds)
    try:
        ran = _run_original(run_a, first, notes)
    except BackendError as failure:
        del first
        if not _may_enlarge(specs, request):
            raise
        spent = time.monotonic() - started
        for dim, why in _larger_sizes(specs, request, failure, spent, started):
            feeds, shapes, notes = make(dim, why)
            first = next(feeds)
            try:
                ran = run_a(first)
            except BackendError:
                del first
                continue
            return Samples(_runs(first, ran, feeds, run_a, notes), shapes, notes, dim)
        raise
    return Samples(_runs(first, ran, feeds, run_a, notes), shapes, notes)


def _may_enlarge(specs: Sequence[InputSpec], request: dict[str, Any]) -> bool:
    """Larger sizes are tried in onnxruntime only (onnx.reference, slow at large sizes, runs
    after onnxruntime has failed at all of them), for random inputs with unknown dims."""
    return (
        request["backend"] == "onnxruntime"
        and request["inputs"] is None
        and has_unknown_dims(specs, request["input_shapes"] or None)
    )


def _larger_sizes(
    specs: Sequence[InputSpec],
    request: dict[str, Any],
    failure: BackendError,
    spent: float,
    started: float,
) -> Iterator[tuple[int, str]]:
    """The sizes to try after ``failure`` at DEFAULT_DIM (which took ``spent`` seconds), with
    the note's reason for each. Stops before a size whose inputs pass MAX_TRIED_ELEMENTS, or
    whose run, estimated from the last one's time by the inputs' size, would end past half the
    request's timeout (the rest is for the folded model and the comparison)."""
    timeout = request.get("timeout")
    given = request["input_shapes"] or None
    elements = _elements(resolve_shapes(specs, given, DEFAULT_DIM)[0])
    cause = str(failure).split(" [input ")[0]
    if len(cause) > 200:  # onnxruntime's messages say what went wrong at their end
        cause = f"{cause[:80]} ... {cause[-110:]}"
    for dim in LARGER_DIMS:
        bigger = _elements(resolve_shapes(specs, given, dim)[0])
        if bigger > MAX_TRIED_ELEMENTS:
            return
        now = time.monotonic()
        if timeout is not None and now - started + spent * bigger / max(elements, 1) > timeout / 2:
            return
        why = (
            f"the original model does not run with unknown dims at {DEFAULT_DIM} ({cause}); "
            f"{dim} is the first of {', '.join(map(str, LARGER_DIMS))} at which it runs"
        )
        yield dim, why
        spent, elements = time.monotonic() - now, bigger


def _elements(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
