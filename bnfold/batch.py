"""Several models in one call: which files, where each output goes, and running them in parallel.

One model's failure never stops the others: each file ends as an ``Outcome`` with a status and
the exit code it earns; the batch exits with the worst of them.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bnfold.api import FileFoldResult, VerifyOptions, default_output, fold_file
from bnfold.errors import (
    EXIT_FAILED,
    EXIT_OK,
    BnfoldError,
    InputError,
    OutputError,
    UsageError,
    VerificationFailed,
)

Mode = Literal["fold", "inspect", "check"]

#: File suffix of bnfold's own outputs; folder scans skip them so a second run does not refold.
FOLDED_SUFFIX = ".folded.onnx"


@dataclass(frozen=True)
class Task:
    """One model to process and where its output goes (None: nothing is written)."""

    input: Path
    output: Path | None


@dataclass(frozen=True)
class Outcome:
    """How one model ended: ``status`` is the file status from ``fold_file``, or for ``check``
    "clean"/"foldable", or "error" with a one-line ``error``."""

    input: Path
    status: str
    exit_code: int
    result: FileFoldResult | None = None
    error: str | None = None
    error_type: str | None = None
    trace: str | None = field(default=None, repr=False)  # for --debug; not part of the JSON

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"input": str(self.input), "status": self.status}
        if self.result is not None:
            body = self.result.to_dict()
            body.pop("input")
            body.pop("status")
            doc.update(body)
        else:
            doc.update(output=None, written=[], report=None, verification=None)
        doc["exit_code"] = self.exit_code
        doc["error"] = (
            {"type": self.error_type, "message": self.error} if self.error is not None else None
        )
        return doc


def collect_tasks(
    paths: Sequence[Path], output: Path | None, *, in_place: bool, write: bool
) -> list[Task]:
    """Expand folders into the models under them and decide each output path.

    A single file with ``-o`` writes exactly there (or into ``-o`` if it is a folder); several
    models or a folder need ``-o`` to be a folder (created if missing), mirroring the input tree.
    """
    entries: list[tuple[Path, Path]] = []  # (model file, path relative to its argument)
    batch = len(paths) > 1
    for arg in paths:
        if arg.is_dir():
            batch = True
            found = sorted(
                p
                for p in arg.rglob("*.onnx")
                if p.is_file() and not p.name.endswith(FOLDED_SUFFIX) and ".bnfold-" not in str(p)
            )
            if not found:
                raise InputError(
                    f"{arg}: folder has no .onnx models", hint="pass model files or another folder"
                )
            entries.extend((p, p.relative_to(arg)) for p in found)
        else:
            entries.append((arg, Path(arg.name)))
    if not write:
        return [Task(p, None) for p, _ in entries]
    if in_place:
        if output is not None:
            raise UsageError("--in-place and -o/--output contradict each other")
        return [Task(p, p) for p, _ in entries]
    if output is None:
        return [Task(p, default_output(p)) for p, _ in entries]
    if not batch and not output.is_dir() and not str(output).endswith(os.sep):
        return [Task(entries[0][0], output)]
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{output}: cannot create the output folder ({exc.strerror or exc})",
            hint="choose another -o/--output",
        ) from None
    return [Task(p, output / rel) for p, rel in entries]


def run_task(
    task: Task,
    mode: Mode,
    verify: VerifyOptions | None,
    force: bool,
    in_place: bool,
) -> Outcome:
    """Process one model; user errors become an ``error`` outcome, bugs propagate."""
    try:
        _ensure_folder(task)
        result = fold_file(
            task.input,
            task.output,
            in_place=in_place,
            write=mode == "fold",
            verify=verify,
            force=force,
        )
    except VerificationFailed as exc:
        status = exc.result.status if exc.result is not None else "verification_failed"
        return Outcome(
            task.input,
            status,
            exc.exit_code,
            exc.result,
            str(exc),
            "VerificationFailed",
        )
    except BnfoldError as exc:
        return Outcome(
            task.input,
            "error",
            exc.exit_code,
            None,
            str(exc),
            type(exc).__name__,
            traceback.format_exc(),
        )
    if mode == "check":
        foldable = result.report.folded > 0
        return Outcome(
            task.input, "foldable" if foldable else "clean", EXIT_FAILED if foldable else 0, result
        )
    # --force wrote it anyway; the exit code still says the check did not pass
    refused = result.status == "verification_failed" or (
        result.status == "unverified" and verify is not None and verify.require_verified
    )
    return Outcome(task.input, result.status, EXIT_FAILED if refused else EXIT_OK, result)


def _ensure_folder(task: Task) -> None:
    """Create the mirrored sub-folder a batch output goes to."""
    if task.output is None or task.output.parent.exists():
        return
    try:
        task.output.parent.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(
            f"{task.output}: cannot create the output folder ({exc.strerror or exc})",
            hint="choose another -o/--output",
        ) from None


def run_tasks(
    tasks: Sequence[Task],
    mode: Mode,
    *,
    verify: VerifyOptions | None,
    force: bool = False,
    in_place: bool = False,
    jobs: int = 1,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every task (``jobs`` processes in parallel); outcomes come back in task order."""
    outcomes: dict[int, Outcome] = {}
    for i, outcome in _execute(tasks, mode, verify, force, in_place, jobs):
        outcomes[i] = outcome
        if on_done is not None:
            on_done(outcome)
    return [outcomes[i] for i in range(len(tasks))]


def _execute(
    tasks: Sequence[Task],
    mode: Mode,
    verify: VerifyOptions | None,
    force: bool,
    in_place: bool,
    jobs: int,
) -> Iterator[tuple[int, Outcome]]:
    if jobs <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            yield i, run_task(task, mode, verify, force, in_place)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = {
            pool.submit(run_task, task, mode, verify, force, in_place): i
            for i, task in enumerate(tasks)
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """The batch's exit code: the worst of its models' (3 unusable input > 1 failed > 0)."""
    return max((o.exit_code for o in outcomes), default=EXIT_OK)
