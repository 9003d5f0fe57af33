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
    EXIT_INPUT,
    EXIT_OK,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    BnfoldError,
    InputError,
    OutputError,
    UsageError,
    VerificationFailed,
)

Mode = Literal["fold", "inspect", "check"]

#: File suffix of bnfold's own outputs; a folder scan for ``fold`` skips them so that a second
#: run does not refold, ``inspect`` and ``check`` look at them like at any model.
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
    paths: Sequence[Path],
    output: str | os.PathLike[str] | None,
    *,
    in_place: bool,
    write: bool,
) -> list[Task]:
    """Expand folders into the models under them and decide each output path.

    A single file with ``-o`` writes exactly there (or into ``-o`` if it is a folder or ends with
    a path separator); several models or a folder need ``-o`` to be a folder (created if
    missing), mirroring the input tree. An output folder inside an input folder is not searched
    (a second run must not fold the first run's outputs), and two models that would be written
    to the same file, or over one of the inputs, are a usage error.
    """
    out_text = os.fspath(output) if output is not None else None
    out = Path(out_text) if out_text is not None else None
    wants_folder = out_text is not None and out_text.endswith(("/", os.sep))
    entries: list[tuple[Path, Path]] = []  # (model file, path relative to its argument)
    batch = len(paths) > 1
    for arg in paths:
        if _is_dir(arg):
            batch = True
            skip = _resolved(out) if out is not None and write and not in_place else None
            if skip is not None and skip == _resolved(arg):
                raise UsageError(
                    f"{out}: the output folder is the input folder, so every output would "
                    "overwrite its input",
                    hint="choose another -o/--output, or pass --in-place",
                )
            found = sorted(
                p
                for p in arg.rglob("*.onnx")
                if p.is_file()
                and not (write and p.name.endswith(FOLDED_SUFFIX))
                and ".bnfold-" not in str(p)
                and not _inside(p, skip)
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
        if out is not None:
            raise UsageError("--in-place and -o/--output contradict each other")
        return _distinct([Task(p, p) for p, _ in entries])
    if out is None:
        return _distinct([Task(p, default_output(p)) for p, _ in entries])
    if not batch and not wants_folder and not _is_dir(out):
        return _distinct([Task(entries[0][0], out)])
    if batch and not wants_folder and not _is_dir(out) and out.suffix == ".onnx":
        raise UsageError(
            f"{out}: several models cannot be written to one file",
            hint="give -o/--output a folder (it is created if missing)",
        )
    _check_creatable(out)
    return _distinct([Task(p, out / rel) for p, rel in entries])


def collect_models(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Model files, with folders expanded into the ``*.onnx`` under them (bnfold's own
    ``*.folded.onnx`` outputs skipped, as everywhere)."""
    return [
        t.input for t in collect_tasks([Path(p) for p in paths], None, in_place=False, write=False)
    ]


def _check_creatable(folder: Path) -> None:
    """OutputError, before any model is read, when the output folder cannot be made: it is a
    file, or its nearest existing parent is a file or is not writable. The folders themselves
    are created only when a model is written into them (``fold_file``), so refused inputs leave
    none behind."""
    probe = folder
    while not _exists(probe) and probe != probe.parent:
        probe = probe.parent
    why = None
    if not _is_dir(probe):
        why = "File exists" if probe == folder else "Not a directory"
    elif probe != folder and not os.access(probe, os.W_OK):
        why = "Permission denied"
    if why is not None:
        raise OutputError(
            f"{folder}: cannot create the output folder ({why})",
            hint="choose another -o/--output",
        )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system, a loop of links: not a folder
        return False


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    resolved = _resolved(path)
    return resolved is not None and folder in resolved.parents


def _distinct(tasks: list[Task]) -> list[Task]:
    """Refuse a batch in which two models would be written to one file, or one model's output
    would replace another model of the same batch."""
    inputs = {_resolved(t.input): t for t in tasks}
    outputs: dict[Path, Task] = {}
    for task in tasks:
        assert task.output is not None
        key = _resolved(task.output)
        if key is None:
            continue
        first = outputs.setdefault(key, task)
        if first is not task:
            raise UsageError(
                f"{first.input} and {task.input} would both be written to {task.output}",
                hint="fold them in separate runs, or into separate -o/--output folders",
            )
        other = inputs.get(key)
        if other is not None and other is not task:
            raise UsageError(
                f"{task.input}: its output {task.output} would replace {other.input}, another "
                "model of this run",
                hint="choose another -o/--output",
            )
    return tasks


def run_task(
    task: Task,
    mode: Mode,
    verify: VerifyOptions | None,
    force: bool,
    in_place: bool,
    record: bool = True,
) -> Outcome:
    """Process one model; user errors become an ``error`` outcome, bugs propagate."""
    try:
        result = fold_file(
            task.input,
            task.output,
            in_place=in_place,
            write=mode == "fold",
            verify=verify,
            force=force,
            create_folders=True,
            record=record,
        )
    except VerificationFailed as exc:
        status = exc.result.status if exc.result is not None else "verification_failed"
        return Outcome(
            task.input,
            status,
            exc.exit_code,
            exc.result,
            exc.cli_message,
            "VerificationFailed",
        )
    except BnfoldError as exc:
        return Outcome(
            task.input,
            "error",
            exc.exit_code,
            None,
            exc.cli_message,
            type(exc).__name__,
            traceback.format_exc(),
        )
    if mode == "check":
        foldable = bool(result.report.gated())
        return Outcome(
            task.input, "foldable" if foldable else "clean", EXIT_FAILED if foldable else 0, result
        )
    # --force wrote it anyway; the exit code still says the check did not pass
    refused = result.status == "verification_failed" or (
        result.status == "unverified" and verify is not None and verify.require_verified
    )
    code = EXIT_FAILED if refused else EXIT_UNVERIFIED if result.status == "unverified" else 0
    return Outcome(task.input, result.status, code, result)


def run_tasks(
    tasks: Sequence[Task],
    mode: Mode,
    *,
    verify: VerifyOptions | None,
    force: bool = False,
    in_place: bool = False,
    jobs: int = 1,
    on_done: Callable[[int, Outcome], None] | None = None,
    record: bool = True,
) -> list[Outcome]:
    """Run every task (``jobs`` processes in parallel); outcomes come back in task order.

    ``on_done(index, outcome)`` is called as each task finishes (tasks start in order);
    ``record`` as for ``fold_file``.
    """
    outcomes: dict[int, Outcome] = {}
    for i, outcome in _execute(tasks, mode, verify, force, in_place, jobs, record):
        outcomes[i] = outcome
        if on_done is not None:
            on_done(i, outcome)
    return [outcomes[i] for i in range(len(tasks))]


def _execute(
    tasks: Sequence[Task],
    mode: Mode,
    verify: VerifyOptions | None,
    force: bool,
    in_place: bool,
    jobs: int,
    record: bool,
) -> Iterator[tuple[int, Outcome]]:
    if jobs <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            yield i, run_task(task, mode, verify, force, in_place, record)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = {
            pool.submit(run_task, task, mode, verify, force, in_place, record): i
            for i, task in enumerate(tasks)
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


#: How bad each exit code is, for a batch: unusable input, usage, failed, unverified, ok.
_SEVERITY = (EXIT_OK, EXIT_UNVERIFIED, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT)


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """The batch's exit code: the worst of its models' (3 unusable input > 1 failed >
    4 written unverified > 0)."""
    return max((o.exit_code for o in outcomes), key=_SEVERITY.index, default=EXIT_OK)
