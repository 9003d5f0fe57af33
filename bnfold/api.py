"""The Python API: fold a ModelProto, or fold a file and write the result."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bnfold._version import __version__
from bnfold.errors import UsageError, VerificationFailed
from bnfold.fold.engine import FoldEngine
from bnfold.fold.report import FoldReport, FoldResult
from bnfold.fold.rules import DEFAULT_RULES
from bnfold.fold.rules.base import FoldRule
from bnfold.model import proto
from bnfold.model import record as fold_record
from bnfold.model.reading import open_model_file, read_model
from bnfold.model.staging import stage_model
from bnfold.verification import run as verification
from bnfold.verification.report import DEFAULT_TIMEOUT, VerifyReport


def fold_model(
    model: proto.ModelProto | str | os.PathLike[str],
    *,
    inplace: bool = False,
    rules: Sequence[FoldRule] = DEFAULT_RULES,
    base_dir: str | os.PathLike[str] | None = None,
) -> FoldResult:
    """Fold every foldable BatchNormalization of ``model`` into the layer before it.

    ``model`` is a ModelProto or the path of a model file (read with its external data; the
    file is not changed). Tensors left in external data files are read from ``base_dir`` (the
    model file's folder) when a fold needs them; folded tensors are then held in the model.
    Unless ``inplace``, a given ModelProto is left untouched and a folded copy is returned.
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        model, _ = read_model(path, load_external_data=True)
        base_dir = path.parent if base_dir is None else base_dir
        inplace = True  # the model was read for this call: nobody else holds it
    elif not isinstance(model, proto.ModelProto):
        raise TypeError(
            f"fold_model() takes an onnx.ModelProto or a path, not {type(model).__name__}"
        )
    if not inplace:
        copy = proto.ModelProto()
        copy.CopyFrom(model)
        model = copy
    report = FoldEngine(model, rules, base_dir=base_dir).run()
    return FoldResult(model=model, report=report)


def default_output(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.folded.onnx`` beside it."""
    p = Path(path)
    return (
        p.with_name(p.stem + ".folded.onnx") if p.suffix else p.with_name(p.name + ".folded.onnx")
    )


@dataclass(frozen=True)
class VerifyOptions:
    """How ``fold_file`` checks the folded model against the original (see ``bnfold.verify``)."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    inputs: str | os.PathLike[str] | None = None
    samples: int = 1
    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    output_tolerances: Mapping[str, tuple[float | None, float | None]] | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    require_verified: bool = False

    def __post_init__(self) -> None:
        """Refuse unusable numbers when the options are made, before any model is read."""
        verification.check_options(
            samples=self.samples,
            rtol=self.rtol,
            atol=self.atol,
            output_tolerances=self.output_tolerances,
            timeout=self.timeout,
        )


#: What happened to one model file: written after a passing check, written with nothing folded,
#: written unverified (nothing could run it), refused (check failed), or only inspected.
FileStatus = Literal["folded", "unchanged", "unverified", "verification_failed", "inspected"]


@dataclass(frozen=True)
class FileFoldResult:
    """What ``fold_file`` did: the report, the verification and the files it wrote."""

    input: Path
    output: Path | None
    report: FoldReport
    status: FileStatus
    verification: VerifyReport | None = None
    written: tuple[Path, ...] = field(default=())
    #: bytes of the input (model file and external data) and of what was written
    size_before: int | None = None
    size_after: int | None = None
    #: the fold record (``bnfold.model.record``) written into the output; for ``write=False``
    #: (inspect, check), the one the model already carries; None when there is none
    record: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output) if self.output else None,
            "status": self.status,
            "written": [str(p) for p in self.written],
            "size_before": self.size_before,
            "size_after": self.size_after,
            "report": self.report.to_dict(),
            "verification": self.verification.to_dict() if self.verification else None,
            "record": self.record,
        }


#: The exit code bnfold was told to stop with (SIGTERM), or None: see ``stop``.
_stopped: int | None = None


def stop(code: int) -> None:
    """Make every later ``fold_file`` raise ``SystemExit(code)`` before it reads or writes
    anything: a batch told to stop must not start its next model."""
    global _stopped
    _stopped = code


def fold_file(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    in_place: bool = False,
    write: bool = True,
    verify: VerifyOptions | None = VerifyOptions(),
    force: bool = False,
    rules: Sequence[FoldRule] = DEFAULT_RULES,
    create_folders: bool = False,
    record: bool = True,
) -> FileFoldResult:
    """Fold the model file at ``path``, check the result with onnxruntime, and write it.

    The output (default ``<stem>.folded.onnx`` beside the input) is staged beside its destination,
    verified there against the input file, and only then renamed into place. A failed check
    raises ``VerificationFailed`` (carrying this result) and writes nothing unless ``force``.
    ``verify=None`` skips the check; ``write=False`` only reports what would be folded.
    External data is loaded and written back external beside the output. The input file is never
    modified unless ``in_place``. ``create_folders`` creates the output's missing folders when
    the output is staged (after the fold: never for an input that is refused), and removes them
    again when nothing is written there (else a missing folder is an ``OutputError``).

    The output carries a fold record (metadata key ``bnfold``: the source's sha256, the options,
    what was folded, what verification proved; see ``bnfold.model.record``) unless ``record`` is
    False. A model left unchanged keeps the record it has, so folding bnfold's own output gives
    the same bytes; a model folded again gets a new record naming its predecessor. Without a
    record, a record the input had is dropped when the model changed (it would describe another
    model).
    """
    if _stopped is not None:
        raise SystemExit(_stopped)
    src = Path(path)
    dst = src if in_place else Path(output) if output is not None else default_output(src)
    if write and not in_place and _same_file(src, dst):
        raise UsageError(
            f"{dst}: output would overwrite the input",
            hint="choose another output, or fold in place",
        )
    # Weights stay on disk (inline or external): folds read what they change, the writer copies
    # the rest from file to file.
    opened = open_model_file(src)
    model, external, store = opened.model, opened.external, opened.store
    # the files the input is read from, taken before folding: a fold of every weight in an
    # external data file leaves no tensor that names it, but the file is still the source's
    files = opened.files()
    if write and not in_place:
        _check_not_an_input(src, dst, files)
    # Folded weights stay arrays in the store until written: one copy less of each, and for
    # inspect/check (write=False) none of them is serialized into the model at all.
    size = _size(files)
    engine = FoldEngine(model, rules, base_dir=src.parent, store=store)
    report = engine.run()
    old = fold_record.read(model)
    if not write:
        return FileFoldResult(
            input=src,
            output=None,
            report=report,
            status="inspected",
            size_before=size,
            record=old,
        )
    if in_place and not report.changed:  # same bytes, same mtime: build tools see no change
        return FileFoldResult(
            input=src, output=dst, report=report, status="unchanged", size_before=size, record=old
        )
    # the source is hashed in a thread while the model is written and verified
    digest = None
    if record and (report.changed or old is None):
        digest = fold_record.digest_in_background(src, files)
    elif not record and report.changed:
        fold_record.put(model, None)  # it described the model before this fold
    staging = stage_model(
        model,
        dst,
        external_data=external or None,
        source_dir=src.parent,
        store=store,
        create_folders=create_folders,
    )
    with staging as staged:
        del model, engine, store, opened  # the staged file is what gets checked and written
        verification = None
        status: FileStatus = "folded" if report.changed else "unchanged"
        if verify is not None and report.changed:
            # the work folder goes into the staging folder: nothing is written outside the
            # output's folder, and a child whose parent dies removes the staging folder too
            verification = verify_with(
                src, staged.path, verify, scratch_dir=staged.tmpdir, cleanup=(staged.tmpdir,)
            )
            if verification.status == "failed":
                status = "verification_failed"
            elif verification.status == "unverified":
                status = "unverified"
        refused = status == "verification_failed" or (
            status == "unverified" and verify is not None and verify.require_verified
        )
        result = FileFoldResult(
            input=src,
            output=dst,
            report=report,
            status=status,
            verification=verification,
            size_before=size,
        )
        if refused and not force:
            raise VerificationFailed(_refusal(result), result=result)
        written_record = old if record else None
        if digest is not None:
            previous = old if report.changed else None
            written_record = _record(digest(), report, verification, rules, verify, force, previous)
            fold_record.rewrite(staged.path, fold_record.encode(written_record))
        written = tuple(staged.commit())
    return replace(result, written=written, size_after=_size(written), record=written_record)


@dataclass(frozen=True)
class RecordCheck:
    """Whether a model's fold record names ``original`` as its source: "match", "mismatch", or
    "none" (no record, or not one bnfold can read). ``recorded`` is the source sha256 in the
    record, ``actual`` the original file's; ``detail`` says what else differs (external data)."""

    status: Literal["match", "mismatch", "none"]
    recorded: str | None = None
    actual: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "recorded_sha256": self.recorded,
            "original_sha256": self.actual,
            "detail": self.detail or None,
        }


def check_record(
    original: str | os.PathLike[str], candidate: str | os.PathLike[str]
) -> RecordCheck:
    """Compare the fold record of ``candidate`` with the file ``original`` (and its external
    data): was the candidate folded from exactly this file? Reads the candidate's record without
    its graph; hashes the original in full."""
    record = fold_record.read_file(candidate)
    source = record.get("source") if record is not None else None
    if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
        return RecordCheck("none")
    opened = open_model_file(original)
    actual = fold_record.source_digest(opened.path, opened.files())
    listed = source.get("external_data")
    recorded_data = [
        e.get("sha256") if isinstance(e, dict) else None
        for e in (listed if isinstance(listed, list) else [])
    ]
    detail = ""
    if recorded_data != [e["sha256"] for e in actual["external_data"]]:
        detail = " (and its external data differs)"
    same = source["sha256"] == actual["sha256"] and not detail
    return RecordCheck("match" if same else "mismatch", source["sha256"], actual["sha256"], detail)


def verify_with(
    original: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    options: VerifyOptions,
    *,
    scratch_dir: str | os.PathLike[str] | None = None,
    cleanup: Sequence[str | os.PathLike[str]] = (),
) -> VerifyReport:
    """``bnfold.verify`` with the settings held in ``options`` (``scratch_dir`` and ``cleanup``
    as for ``verify``)."""
    return verification.verify(
        original,
        candidate,
        input_shapes=options.input_shapes,
        inputs=options.inputs,
        samples=options.samples,
        seed=options.seed,
        rtol=options.rtol,
        atol=options.atol,
        output_tolerances=options.output_tolerances,
        timeout=options.timeout,
        scratch_dir=scratch_dir,
        cleanup=cleanup,
    )


def _record(
    source: dict[str, Any],
    report: FoldReport,
    verification: VerifyReport | None,
    rules: Sequence[FoldRule],
    verify: VerifyOptions | None,
    force: bool,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The fold record of one written model: no paths, no times, only what the same input and
    options reproduce."""
    folded: dict[str, int] = {}
    for d in report.decisions:
        if d.folded:
            folded[d.op] = folded.get(d.op, 0) + 1
    options: dict[str, Any] = {
        "rules": "default"
        if tuple(rules) == tuple(DEFAULT_RULES)
        else [type(r).__name__ for r in rules],
        "force": force,
        "verify": None,
    }
    if verify is not None:
        inputs = fold_record.file_digest(Path(verify.inputs)) if verify.inputs else None
        options["verify"] = {
            "samples": verify.samples,
            "seed": verify.seed,
            "rtol": verify.rtol,
            "atol": verify.atol,
            "output_tolerances": {k: list(v) for k, v in (verify.output_tolerances or {}).items()},
            "input_shapes": {k: list(v) for k, v in (verify.input_shapes or {}).items()},
            "inputs_sha256": inputs["sha256"] if inputs else None,
            "require_verified": verify.require_verified,
        }
    doc: dict[str, Any] = {
        "record": fold_record.FORMAT,
        "tool": "bnfold",
        "version": __version__,
        "source": source,
        "options": options,
        "folded": folded,
        "kept": report.reasons(),
        "nodes": {"before": report.nodes_before, "after": report.nodes_after},
        "verification": _verification_record(verification, report),
    }
    before = previous.get("source") if previous else None
    if previous is not None and isinstance(before, dict):
        doc["previous"] = {"version": previous.get("version"), "source": before.get("sha256")}
    return doc


def _verification_record(v: VerifyReport | None, report: FoldReport) -> dict[str, Any]:
    """What verification proved, in the record: never its free-text reasons (they may name
    temporary files)."""
    if v is None:
        why = "nothing_folded" if not report.changed else "no_verify"
        return {"status": "not_run", "why": why}
    doc: dict[str, Any] = {
        "status": v.status,
        "backend": v.backend,
        "backend_version": v.backend_version,
        "providers": list(v.providers),
        "samples": v.samples,
        "seed": v.seed,
        "input_shapes": v.input_shapes,
        "outputs": len(v.outputs),
    }
    worst = v.worst(1)
    if worst:
        w = worst[0]
        doc["worst"] = {
            "output": w.name,
            "max_abs": _rounded(w.max_abs),
            "max_rel": _rounded(w.max_rel),
            "rtol": w.rtol,
            "atol": w.atol,
        }
    return doc


def _rounded(x: float) -> float | None:
    """Four significant digits (a summary, and steady across runs), None when not finite."""
    return float(f"{x:.4g}") if math.isfinite(x) else None


def _refusal(result: FileFoldResult) -> str:
    report = result.verification
    assert report is not None
    if report.status == "unverified":
        return (
            f"{result.input}: the folded model could not be verified ({report.reason}); "
            "not written because verification was required"
        )
    worst = report.worst(1)
    detail = ""
    if worst:
        w = worst[0]
        detail = (
            f": output '{w.name}' max abs error {w.max_abs:.3g} (atol {w.atol:g}, rtol {w.rtol:g})"
        )
    return (
        f"{result.input}: the folded model's outputs differ from the original{detail}; not written"
    )


def _check_not_an_input(src: Path, dst: Path, used: set[Path]) -> None:
    """Refuse an output, or the data file beside it, that is one of the files the input reads:
    writing it would modify the input."""
    data = dst.with_name(dst.name + ".data")
    for path in sorted(used):
        for out in (dst, data):
            if _same_file(path, out):
                what = (
                    "the input"
                    if _same_file(path, src)
                    else f"{path}, the external data of the input {src}"
                )
                raise UsageError(f"{out}: would overwrite {what}", hint="choose another output")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _size(files: Iterable[Path]) -> int:
    """Bytes of ``files`` together (a file that vanished counts 0)."""
    total = 0
    for path in set(files):
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total
