"""The child process of ``bnfold.verify``: run two models on the same inputs, compare outputs.

    python -m bnfold.verification.worker REQUEST.json RESULT.json

Runs in its own process so that a crash of onnxruntime (a segfault on a legal model) cannot take
bnfold down. RESULT.json holds {"status": "ok", ...} with the comparisons, "backend_error" when
the backend cannot run the models (the parent then tries the next backend), or "user_error" when
the request does not fit the models (bad --input-shape or --inputs).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from bnfold.errors import UsageError
from bnfold.runtime.inputs import InputSpec
from bnfold.runtime.serve import BackendError, first_line, serve
from bnfold.runtime.session import open_session, session_inputs
from bnfold.verification.compare import Runner, compare_arrays, merge, tolerances_for
from bnfold.verification.reference import reference_model
from bnfold.verification.report import OutputComparison
from bnfold.verification.samples import samples_for

#: The execution providers verification runs onnxruntime on (recorded in the fold record).
PROVIDERS = ("CPUExecutionProvider",)


def ort_model(
    path: str, shapeless: Sequence[str] = ()
) -> tuple[list[InputSpec], list[str], Runner]:
    """An onnxruntime session at ORT_DISABLE_ALL: the comparison must see the model as written.
    ``shapeless``: the inputs that declare no shape (onnxruntime shows them as scalars)."""
    session = open_session(path, provider=PROVIDERS[0])
    specs = session_inputs(session, shapeless)
    outputs = [o.name for o in session.get_outputs()]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(session.run(None, feed))
        except Exception as exc:
            raise BackendError(first_line(exc)) from None

    return specs, outputs, run


# -- onnx.reference -----------------------------------------------------------------------------


# -- the comparison -----------------------------------------------------------------------------


def _same_interface(
    a: Sequence[InputSpec], b: Sequence[InputSpec], oa: list[str], ob: list[str]
) -> None:
    da = {s.name: s.elem_type for s in a}
    db = {s.name: s.elem_type for s in b}
    if da != db:
        raise UsageError(
            f"the two models have different inputs: {sorted(da.items())} vs {sorted(db.items())}",
            hint="verify compares models with the same inputs and outputs",
        )
    if sorted(oa) != sorted(ob):
        raise UsageError(
            f"the two models have different outputs: {sorted(oa)} vs {sorted(ob)}",
            hint="verify compares models with the same inputs and outputs",
        )


def _compare_into(
    merged: dict[str, OutputComparison],
    outputs: Sequence[str],
    got_a: dict[str, np.ndarray],
    got_b: dict[str, np.ndarray],
    request: dict[str, Any],
) -> None:
    """Compare one sample's outputs and merge them into ``merged`` (the worst over samples)."""
    for name in outputs:
        a, b = np.asarray(got_a[name]), np.asarray(got_b[name])
        rtol, atol = tolerances_for(
            name, str(a.dtype), request["rtol"], request["atol"], request["output_tolerances"]
        )
        c = compare_arrays(name, a, b, rtol, atol)
        merged[name] = merge(merged[name], c) if name in merged else c


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    shapeless = request.get("shapeless") or ()
    if request["backend"] == "onnxruntime":
        specs, outputs, run_a = ort_model(request["original"], shapeless)
        specs_b, outputs_b, run_b = ort_model(request["candidate"], shapeless)
    else:
        specs, outputs, run_a = reference_model(request["original"])
        specs_b, outputs_b, run_b = reference_model(request["candidate"])
    _same_interface(specs, specs_b, outputs, outputs_b)
    samples = samples_for(specs, run_a, request)
    merged: dict[str, OutputComparison] = {}
    for feed, ran in samples.runs:
        got_a = dict(zip(outputs, ran, strict=True))
        got_b = dict(zip(outputs_b, run_b(feed), strict=True))
        del feed, ran  # one sample in memory: this one goes before the next is made
        _compare_into(merged, outputs, got_a, got_b, request)
        del got_a, got_b
    result = {
        "status": "ok",
        "backend": request["backend"],
        **_backend_identity(request["backend"]),
        "outputs": [asdict(merged[n]) for n in outputs],
        "input_shapes": {k: list(v) for k, v in samples.shapes.items()},
        "notes": samples.notes,
    }
    if samples.enlarged is not None:
        result["enlarged"] = samples.enlarged
    return result


def _backend_identity(backend: str) -> dict[str, Any]:
    """Which runtime, which release and which providers computed the outputs."""
    if backend == "onnxruntime":
        import onnxruntime

        return {"backend_version": onnxruntime.__version__, "providers": list(PROVIDERS)}
    import onnx

    return {"backend_version": onnx.__version__, "providers": []}


def main(argv: Sequence[str]) -> int:
    return serve(argv, run_request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
