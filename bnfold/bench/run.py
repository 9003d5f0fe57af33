"""What folding buys at inference time: ``bnfold.benchmark`` and ``bnfold bench``.

The original model is timed at each requested onnxruntime optimization level (by default
ORT_DISABLE_ALL, the model as written, and ORT_ENABLE_BASIC, where onnxruntime fuses
Conv+BatchNormalization itself when it can), the folded model at ORT_DISABLE_ALL, on each
requested execution provider and batch size. One child process times every configuration once
per round, in rotation, until each speedup's bootstrap interval is within ``target_ci`` or the
``max_seconds`` budget ends (then the report is ``noisy``). ``compare_baseline`` turns a previous
run's JSON into a regression gate.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bnfold.bench.defaults import (
    DEFAULT_ITERATIONS,
    DEFAULT_LEVELS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_PROVIDERS,
    DEFAULT_TARGET_CI,
    DEFAULT_WARMUP,
)
from bnfold.bench.report import BenchReport, Latency, ModelStats, Speedup, SpeedupGroup, level_name
from bnfold.errors import InputError, UsageError


def _stats(path: Path, model: Any, files: set[Path]) -> ModelStats:
    """Size on disk (the model file and the external data files its bytes are in), nodes, BNs."""
    from bnfold.fold.engine import count_nodes
    from bnfold.model.graph import ModelIndex
    from bnfold.model.nodes import is_op

    index = ModelIndex(model)
    bns = sum(1 for sc in index.scopes for n in sc.nodes if is_op(n, "BatchNormalization"))
    size = sum(f.stat().st_size for f in {path, *files} if f.is_file())
    return ModelStats(str(path), size, count_nodes(model), bns)


def _check_options(
    iterations: int,
    warmup: int,
    threads: int | None,
    providers: Sequence[str],
    levels: Sequence[str],
    batch_sizes: Sequence[int],
    max_seconds: float,
    target_ci: float,
) -> None:
    if iterations < 1 or warmup < 0:
        raise UsageError("--iterations must be at least 1 and --warmup at least 0")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if not providers or not levels:
        raise UsageError("--provider and --level need at least one value each")
    bad = [n for n in batch_sizes if n < 1]
    if bad:
        raise UsageError(f"--batch-size {bad[0]}: must be at least 1")
    if not max_seconds > 0 or not 0 < target_ci < 1:
        raise UsageError(
            "--max-seconds must be positive and --target-ci between 0 and 1",
            hint="e.g. --max-seconds 10 --target-ci 0.02 (+-2%)",
        )


def benchmark(
    model: str | os.PathLike[str],
    folded: str | os.PathLike[str] | None = None,
    *,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    levels: Sequence[str] = DEFAULT_LEVELS,
    folded_level: str = "disable_all",
    batch_sizes: Sequence[int] = (),
    iterations: int = DEFAULT_ITERATIONS,
    warmup: int = DEFAULT_WARMUP,
    threads: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    target_ci: float = DEFAULT_TARGET_CI,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    timeout: float | None = 1800.0,
) -> BenchReport:
    """Time ``model`` and its folded form (``folded``, or folded here in memory) in onnxruntime.

    ``iterations`` is the minimum number of rounds; timing goes on until every speedup's 95%
    interval is within +-``target_ci`` (relative) or ``max_seconds`` of timing have passed.
    Raises UsageError for options that do not fit (an execution provider this onnxruntime does
    not have, a level that is none), InputError when a model cannot be read or run.
    """
    from bnfold.fold.engine import FoldEngine
    from bnfold.model.reading import open_model_file, shapeless_inputs
    from bnfold.model.writer import write_model
    from bnfold.runtime.child import run_child

    levels = list(dict.fromkeys(level_name(v) for v in levels))
    folded_level = level_name(folded_level)
    providers = list(dict.fromkeys(providers))
    _check_options(
        iterations, warmup, threads, providers, levels, batch_sizes, max_seconds, target_ci
    )
    src = Path(model)
    opened = open_model_file(src)
    original = opened.model
    shapeless = shapeless_inputs(original)
    original_stats = _stats(src, original, opened.files())
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        work = Path(tmp)
        fold_report = None
        if folded is None:
            engine = FoldEngine(original, base_dir=src.parent, store=opened.store)
            fold_report = engine.run()
            folded_path = work / "folded.onnx"
            write_model(
                original,
                folded_path,
                external=None,
                data_name="folded.onnx.data",
                source_dir=src.parent,
                store=opened.store,
            )
            written = {folded_path.with_name("folded.onnx.data")}
            folded_stats = replace(_stats(folded_path, original, written), path=None)
        else:
            folded_path = Path(folded)
            folded_opened = open_model_file(folded_path)
            folded_stats = _stats(folded_path, folded_opened.model, folded_opened.files())
        del original, opened
        request = {
            "original": str(src),
            "folded": str(folded_path),
            "providers": providers,
            "levels": levels,
            "folded_level": folded_level,
            "batch_sizes": list(batch_sizes),
            "min_rounds": iterations,
            "max_seconds": max_seconds,
            "target_ci": target_ci,
            "warmup": warmup,
            "threads": threads,
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "shapeless": shapeless,
            "seed": seed,
        }
        limit = None if timeout is None else timeout + max_seconds
        outcome = run_child("bnfold.bench.worker", request, work, limit, tag="bench")
    status = outcome["status"]
    if status == "user_error":
        error = UsageError if outcome.get("type") == "UsageError" else InputError
        raise error(outcome["message"], hint=outcome.get("hint"))
    if status != "ok":
        raise InputError(
            f"{src}: onnxruntime could not run the benchmark ({outcome['message']})",
            hint="check that onnxruntime can load the model (bnfold verify runs it too)",
        )
    groups = tuple(
        SpeedupGroup(
            g["provider"],
            g["batch_size"],
            g["threads"],
            {
                k: Speedup(v["median"], tuple(v["ci95"]))
                for k, v in g.items()
                if k.startswith("vs_")
            },
        )
        for g in outcome["speedups"]
    )
    return BenchReport(
        model=str(src),
        original=original_stats,
        folded=folded_stats,
        runs=tuple(Latency.from_dict(r) for r in outcome["runs"]),
        speedups=groups,
        noisy=outcome["noisy"],
        rounds=outcome["rounds"],
        seconds=outcome["seconds"],
        iterations=iterations,
        warmup=warmup,
        threads=threads,
        target_ci=target_ci,
        max_seconds=max_seconds,
        input_shapes=outcome["input_shapes"],
        skipped_batch_sizes=tuple(outcome["skipped_batch_sizes"]),
        fold=fold_report,
        notes=tuple(outcome.get("notes", [])),
    )


# -- baseline ---------------------------------------------------------------------------------


# -- plot -------------------------------------------------------------------------------------
