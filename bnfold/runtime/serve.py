"""The child's side: read a JSON request, answer it into a JSON result, and die with the parent.

Whatever goes wrong becomes the answer ("backend_error" / "user_error"), never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnfold.errors import BnfoldError


class BackendError(Exception):
    """The backend cannot load or run a model."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 400 characters), for a report."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:400]


#: The exit code of a child that could not write its result (EX_TEMPFAIL of sysexits.h).
EXIT_NO_RESULT = 75


def serve(argv: Sequence[str], handle: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Read the JSON request at argv[0], answer it with ``handle`` into the JSON file at argv[1];
    what goes wrong becomes the answer (backend_error / user_error), never a traceback.

    A result that cannot be written (a full disk) is said in one line on stderr, exit 75. Once
    the request is read, a watcher thread ends this process when the parent dies (see
    ``watch_parent``).
    """
    request_path, result_path = argv
    try:
        request = json.loads(Path(request_path).read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the request {request_path}: {first_line(exc)}", file=sys.stderr)
        return 2
    if request.get("parent_fd") is not None:
        cleanup = [Path(request_path).parent, *map(Path, request.get("cleanup") or ())]
        watch_parent(int(request["parent_fd"]), cleanup)
    try:
        result = handle(request)
    except BackendError as exc:
        result = {"status": "backend_error", "message": str(exc)}
    except BnfoldError as exc:
        result = {
            "status": "user_error",
            "type": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
        }
    except Exception as exc:  # a bug or an unexpected failure: report it, do not hide it
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result = {
            "status": "backend_error",
            "message": f"{type(exc).__name__}: {first_line(exc)} ({tb})",
        }
    try:
        Path(result_path).write_text(json.dumps(result))
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(result_path).unlink()  # no half-written result for the parent to misread
        print(exc.strerror or first_line(exc), file=sys.stderr)
        return EXIT_NO_RESULT
    return 0


def watch_parent(fd: int, cleanup: Sequence[Path]) -> None:
    """Exit this process, removing the folders in ``cleanup``, once the parent has died.

    ``fd`` is the read end of a pipe whose write end only the parent holds, so reading it
    blocks until the parent closes it or dies, however it dies (SIGKILL too). The read runs in a
    daemon thread; onnxruntime and numpy release the GIL while they compute, so it gets to run.
    """

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=wait, name="bnfold-parent-watch", daemon=True).start()
