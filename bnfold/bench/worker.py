"""The child process of ``bnfold.benchmark``: time onnxruntime sessions and runs.

    python -m bnfold.bench.worker REQUEST.json RESULT.json

In its own process, like verification, so an onnxruntime crash becomes a reported error, and so
that onnxruntime is imported only here. Every configuration (execution provider x batch size x
model x optimization level) is timed once per round, in a shuffled rotation, so a slow spell on a
shared machine slows all of them alike instead of one; rounds go on until every speedup's
bootstrap interval is tight enough (``target_ci``) or the time budget (``max_seconds``) ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnfold.bench.stats import median_ci, ratio_ci, relative_half_width
from bnfold.errors import UsageError
from bnfold.runtime.inputs import InputSpec, make_feeds, resolve_shapes
from bnfold.runtime.serve import BackendError, serve
from bnfold.runtime.session import open_session as runtime_session
from bnfold.runtime.session import session_inputs

#: resamples while deciding whether to stop (the reported intervals use the full count)
CHECK_RESAMPLES = 300
#: rounds at most: past this a tiny model's intervals shrink too slowly to be worth the
#: bootstrap's time (and the JSON's size)
MAX_ROUNDS = 5000


@dataclass
class Config:
    """One timed configuration and the latencies measured so far (seconds)."""

    model: str  # "original" or "folded"
    provider: str
    optimization: str
    batch_size: int | None
    session: Any
    session_seconds: float
    feed: dict[str, np.ndarray]
    input_shapes: dict[str, list[int]]
    times: list[float] = field(default_factory=list)


def check_providers(providers: Sequence[str]) -> None:
    """UsageError naming the available providers when one asked for is not in this build."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise UsageError(
            f"execution provider {', '.join(repr(p) for p in missing)} is not available in this "
            f"onnxruntime ({ort.__version__})",
            hint=f"available: {', '.join(available)}",
        )


def open_session(
    path: str, provider: str, level: str, threads: int | None, shapeless: Sequence[str] = ()
) -> tuple[Any, list[InputSpec]]:
    """A session of ``path`` on one execution provider at one optimization level."""
    try:
        session = runtime_session(path, provider=provider, level=level, threads=threads)
    except BackendError as exc:
        raise BackendError(f"{provider} @ {level}: {exc}") from None
    if provider not in session.get_providers():  # e.g. TensorRT without its libraries
        raise BackendError(
            f"onnxruntime did not use {provider} for the session (it fell back to "
            f"{', '.join(session.get_providers())}), so its timings would be mislabelled"
        )
    return session, session_inputs(session, shapeless)


def batch_plan(
    specs: Sequence[InputSpec], sizes: Sequence[int]
) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Which of the requested batch sizes can run, and why the others cannot.

    A symbolic first axis takes any size; a fixed one only its own, so other sizes are skipped
    with a reason rather than fed to onnxruntime (which would refuse them). No size requested,
    or none that fits: one run at the model's own batch ([None]).
    """
    if not sizes:
        return [None], []
    fixed = [(s.name, s.shape[0]) for s in specs if s.shape and isinstance(s.shape[0], int)]
    runnable: list[int | None] = []
    skipped = []
    for n in dict.fromkeys(sizes):
        clash = next(((name, d) for name, d in fixed if d != n), None)
        if clash is None:
            runnable.append(n)
        else:
            skipped.append(
                {
                    "batch_size": n,
                    "reason": f"batch axis of input '{clash[0]}' is fixed at {clash[1]}",
                }
            )
    return runnable or [None], skipped


def _shapes_for(
    specs: Sequence[InputSpec], given: dict[str, list[int]], batch: int | None
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    shapes, notes = resolve_shapes(specs, given or None)
    if batch is None:
        return shapes, notes
    for s in specs:
        if s.shape and not isinstance(s.shape[0], int) and shapes[s.name]:
            shapes[s.name] = (batch, *shapes[s.name][1:])
    return shapes, [n for n in notes if "default for unknown dims" not in n] or []


def _batch_of(shapes: dict[str, tuple[int, ...]]) -> int | None:
    return next((dims[0] for dims in shapes.values() if dims), None)


def open_configs(request: dict[str, Any]) -> tuple[list[Config], list[dict[str, Any]], list[str]]:
    """Every configuration's session and feed, the batch sizes skipped, and notes on inputs."""
    threads = request["threads"]
    plan = [("original", level) for level in request["levels"]]
    plan.append(("folded", request["folded_level"]))
    configs: list[Config] = []
    skipped: list[dict[str, Any]] = []
    notes: list[str] = []
    for provider in request["providers"]:
        # On the CPU each session is made twice, keeping the faster time: the first session of
        # a process also pays onnxruntime's own start-up. Other providers (TensorRT builds
        # engines) are made once.
        tries = 2 if provider == "CPUExecutionProvider" else 1
        opened: dict[tuple[str, str], tuple[Any, list[InputSpec], float]] = {}
        for _ in range(tries):
            for key, level in plan:
                start = time.perf_counter()
                session, specs = open_session(
                    request[key], provider, level, threads, request.get("shapeless") or ()
                )
                seconds = time.perf_counter() - start
                best = min(seconds, opened[key, level][2]) if (key, level) in opened else seconds
                opened[key, level] = (session, specs, best)
        specs = opened[plan[0]][1]
        if {s.name for s in specs} != {s.name for s in opened[plan[-1]][1]}:
            raise UsageError(
                "the folded model has different inputs from the original",
                hint="--folded must be a folded copy of MODEL",
            )
        batches, skipped = batch_plan(specs, request["batch_sizes"])
        if request["batch_sizes"] and batches == [None]:
            notes.append("no --batch-size fits this model; run at its own batch size")
        for batch in batches:
            shapes, shape_notes = _shapes_for(specs, request["input_shapes"], batch)
            notes += [n for n in shape_notes if n not in notes]
            feeds, shapes, _ = make_feeds(
                specs, input_shapes={k: list(v) for k, v in shapes.items()}, seed=request["seed"]
            )
            feed = next(iter(feeds))  # one sample, shared by this batch size's configurations
            for key, level in plan:
                session, _, seconds = opened[key, level]
                configs.append(
                    Config(
                        key,
                        provider,
                        level,
                        batch if batch is not None else _batch_of(shapes),
                        session,
                        seconds,
                        feed,
                        {k: list(v) for k, v in shapes.items()},
                    )
                )
    return configs, skipped, notes


def speedup_pairs(configs: Sequence[Config]) -> list[tuple[str, int, int]]:
    """(key, original index, folded index) for every speedup: per provider and batch size, the
    folded model against the original at each level ("vs_original" is ORT_DISABLE_ALL)."""
    pairs = []
    for j, c in enumerate(configs):
        if c.model != "folded":
            continue
        for i, o in enumerate(configs):
            if o.model == "original" and (o.provider, o.batch_size) == (c.provider, c.batch_size):
                level = o.optimization
                pairs.append(("vs_original" if level == "disable_all" else f"vs_ort_{level}", i, j))
    return pairs


def _tight(configs: Sequence[Config], pairs: Sequence[tuple[str, int, int]], target: float) -> bool:
    return all(
        relative_half_width(ratio_ci(configs[i].times, configs[j].times, resamples=CHECK_RESAMPLES))
        < target
        for _, i, j in pairs
    )


def time_rounds(configs: Sequence[Config], request: dict[str, Any]) -> tuple[int, float, bool]:
    """Warm up, then time rounds until the speedups are tight or the budget ends.

    Returns (rounds, seconds spent timing, tight): ``tight`` False means the budget ended first.
    """
    for c in configs:
        for _ in range(request["warmup"]):
            c.session.run(None, c.feed)
    pairs = speedup_pairs(configs)
    rng = np.random.default_rng(request["seed"])
    min_rounds, budget, target = request["min_rounds"], request["max_seconds"], request["target_ci"]
    start = time.perf_counter()
    rounds, next_check, tight = 0, min_rounds, False
    while True:
        for k in rng.permutation(len(configs)):
            c = configs[k]
            t0 = time.perf_counter()
            c.session.run(None, c.feed)
            c.times.append(time.perf_counter() - t0)
        rounds += 1
        if rounds < min_rounds:
            continue
        # checked every round: rounds may be slow
        over = time.perf_counter() - start >= budget or rounds >= MAX_ROUNDS
        if rounds >= next_check or over:
            tight = _tight(configs, pairs, target)
            if tight or over:
                break
            next_check = max(rounds + 5, int(rounds * 1.25))
    return rounds, time.perf_counter() - start, tight


def _summary(c: Config, threads: int | None) -> dict[str, Any]:
    ms = np.asarray(c.times) * 1e3
    median, lo, hi = median_ci(ms)
    return {
        "model": c.model,
        "provider": c.provider,
        "optimization": c.optimization,
        "batch_size": c.batch_size,
        "threads": threads,
        "session_ms": c.session_seconds * 1e3,
        "median_ms": median,
        "p90_ms": float(np.percentile(ms, 90)),
        "ci95_ms": [lo, hi],
        "min_ms": float(ms.min()),
        "mean_ms": float(ms.mean()),
        "iterations": len(c.times),
        "input_shapes": c.input_shapes,
        "samples_ms": [round(float(v), 5) for v in ms],
    }


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    check_providers(request["providers"])
    configs, skipped, notes = open_configs(request)
    rounds, seconds, tight = time_rounds(configs, request)
    threads, seed = request["threads"], request["seed"]
    speedups: dict[tuple[str, int | None], dict[str, Any]] = {}
    for key, i, j in speedup_pairs(configs):
        o, f = configs[i], configs[j]
        group = speedups.setdefault(
            (f.provider, f.batch_size),
            {"provider": f.provider, "batch_size": f.batch_size, "threads": threads},
        )
        ratio, lo, hi = ratio_ci(o.times, f.times, seed=seed)
        group[key] = {"median": ratio, "ci95": [lo, hi]}
    return {
        "status": "ok",
        "runs": [_summary(c, threads) for c in configs],
        "speedups": list(speedups.values()),
        "rounds": rounds,
        "seconds": seconds,
        "noisy": not tight,
        "skipped_batch_sizes": skipped,
        "input_shapes": configs[0].input_shapes,
        "notes": notes,
    }


def main(argv: Sequence[str]) -> int:
    return serve(argv, run_request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
