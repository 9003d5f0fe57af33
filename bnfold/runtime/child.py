"""The parent's side of a child process: run ``python -m MODULE REQUEST RESULT`` in a temporary
work folder, with a pipe that ends the child when the parent dies; a crash or timeout of the
child is a result, never an exception here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnfold.errors import OutputError
from bnfold.runtime.serve import EXIT_NO_RESULT


@contextlib.contextmanager
def work_folder(prefix: str, scratch_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    """A temporary folder in ``scratch_dir`` (default TMPDIR), removed on exit."""
    try:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=scratch_dir)
    except OSError as exc:
        where = scratch_dir if scratch_dir is not None else tempfile.gettempdir()
        raise temp_folder_error(Path(where), exc) from None
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_folder_error(folder: Path, exc: OSError | str) -> OutputError:
    """The one-line error for a temporary folder that cannot be written (full, read-only)."""
    reason = exc if isinstance(exc, str) else exc.strerror or str(exc)
    if folder.name.startswith(".bnfold-"):  # fold_file's staging folder: name the output's
        folder = folder.parent
    in_tmpdir = folder == Path(tempfile.gettempdir())
    return OutputError(
        f"cannot write the temporary folder in {folder} ({reason})",
        hint="free space there" + (", or set TMPDIR to another folder" if in_tmpdir else ""),
    )


def run_child(
    module: str, request: dict[str, Any], work: Path, timeout: float | None, *, tag: str = ""
) -> dict[str, Any]:
    """Run ``python -m module REQUEST RESULT`` on a JSON request; a crash or timeout of the child
    becomes a result ({"status": "crash" | "timeout", "message": ...}), not an error here.

    The child gets the read end of a pipe whose write end only this process holds: when this
    process dies, however (SIGKILL included), the child sees end-of-file, removes ``work`` and
    the request's "cleanup" folders, and exits (see ``bnfold.runtime.serve.serve``). Its
    TMPDIR is ``work``, so whatever onnxruntime leaves there goes too. A request or result that
    cannot be written in ``work`` is an ``OutputError``.
    """
    req = work / f"request-{tag}.json"
    res = work / f"result-{tag}.json"
    if timeout is not None and math.isinf(timeout):
        timeout = None
    read_end, write_end = os.pipe()
    try:
        try:
            req.write_text(json.dumps({**request, "parent_fd": read_end}))
        except OSError as exc:
            raise temp_folder_error(work.parent, exc) from None
        env = {**os.environ, "TMPDIR": str(work), "TMP": str(work), "TEMP": str(work)}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", module, str(req), str(res)],
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=(read_end,),
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "message": f"timed out after {timeout:g} s (--timeout)"}
    finally:
        os.close(read_end)
        os.close(write_end)
    last = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    if proc.returncode == EXIT_NO_RESULT:
        raise temp_folder_error(work.parent, last or "the result could not be written")
    try:
        result = json.loads(res.read_text())
        if isinstance(result, dict) and isinstance(result.get("status"), str):
            return result
        last = "its result is not a result document"
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:  # truncated or unreadable: the child did not finish it
        last = f"its result cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    if proc.returncode < 0:
        how = f"crashed with signal {-proc.returncode}"
    else:
        how = f"exited with code {proc.returncode}"
    return {
        "status": "crash",
        "message": f"the process running it {how}" + (f": {last}" if last else ""),
    }
