"""The child process of ``bnfold.benchmark``: time onnxruntime sessions and runs.

    python -m bnfold._benchworker REQUEST.json RESULT.json

In its own process, like verification, so an onnxruntime crash becomes a reported error. The three
configurations are timed in rotation (one run of each, then the next round), so a slow spell on a
shared machine slows all of them alike instead of one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnfold._worker import open_session, serve
from bnfold.errors import UsageError
from bnfold.inputs import InputSpec, make_feeds

#: (label, which model, onnxruntime optimization level), in the order they are reported
CONFIGS = (
    ("original", "original", "disable_all"),
    ("original", "original", "basic"),
    ("folded", "folded", "disable_all"),
)


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    threads = request["threads"]
    # Each session is made twice, in rotation, keeping the faster time: the first session of a
    # process also pays onnxruntime's own start-up, and later ones reuse memory freed before.
    created: list[list[float]] = [[] for _ in CONFIGS]
    opened: list[tuple[Any, list[InputSpec], list[str]]] = []
    for _ in range(2):
        opened = []
        for k, (_, key, level) in enumerate(CONFIGS):
            start = time.perf_counter()
            opened.append(open_session(request[key], level=level, threads=threads))
            created[k].append(time.perf_counter() - start)
    sessions = [
        (label, level, session, min(seconds), specs, outputs)
        for (label, _, level), (session, specs, outputs), seconds in zip(
            CONFIGS, opened, created, strict=True
        )
    ]
    specs = sessions[0][4]
    folded_specs = sessions[2][4]
    if {s.name for s in specs} != {s.name for s in folded_specs}:
        raise UsageError(
            "the folded model has different inputs from the original",
            hint="--folded must be a folded copy of MODEL",
        )
    feeds, shapes, notes = make_feeds(
        specs, input_shapes=request["input_shapes"] or None, samples=1, seed=request["seed"]
    )
    feed = next(feeds)
    for _, _, session, _, _, _ in sessions:
        for _ in range(request["warmup"]):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(request["iterations"]):
        for k, (_, _, session, _, _, _) in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            times[k].append(time.perf_counter() - start)
    runs = []
    for (label, level, _, seconds, _, _), samples in zip(sessions, times, strict=True):
        ms = np.asarray(samples) * 1e3
        runs.append(
            {
                "model": label,
                "optimization": level,
                "session_seconds": seconds,
                "median_ms": float(np.median(ms)),
                "p90_ms": float(np.percentile(ms, 90)),
                "min_ms": float(ms.min()),
                "mean_ms": float(ms.mean()),
                "iterations": len(samples),
            }
        )
    return {
        "status": "ok",
        "runs": runs,
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        "notes": notes,
    }


def main(argv: Sequence[str]) -> int:
    return serve(argv, run_request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
