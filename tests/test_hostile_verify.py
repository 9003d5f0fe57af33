"""Verification against a hostile environment (issue 16): bad option values and input files,
a full temporary folder, the bnfold process killed mid-run, many samples.

Every case runs ``python -m bnfold`` for real and checks the exit code, the one-line message, and
that nothing was written or left behind (outputs, staging folders, temporary folders, children).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnfold import fold_model
from bnfold.api import VerifyOptions
from bnfold.errors import UsageError
from bnfold.verification.run import verify
from tests.test_verify import conv_bn

ROOT = Path(__file__).resolve().parent.parent


def run_bnfold(
    *args: str, cwd: Path, tmpdir: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with model.onnx, an empty out/ for the output and an empty tmp/ for TMPDIR."""
    onnx.save(conv_bn(), str(tmp_path / "model.onnx"))
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def leftovers(work: Path) -> list[str]:
    """Everything bnfold may have left: files in out/ and tmp/, hidden staging folders."""
    found = [str(p.relative_to(work)) for d in ("out", "tmp") for p in (work / d).iterdir()]
    return found + [p.name for p in work.glob(".bnfold-*")]


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    err = run.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


# -- item 10: option values and --inputs files that cannot be used: exit 2, nothing written -----


def _bad_inputs(work: Path) -> dict[str, Path]:
    good = work / "good.npz"
    np.savez(good, x=np.zeros((1, 3, 8, 8), np.float32))
    data = good.read_bytes()
    (work / "truncated.npz").write_bytes(data[:200])
    corrupt = bytearray(data)
    corrupt[data.find(b"\x93NUMPY") + 200] ^= 0xFF  # inside the array: the CRC no longer fits
    (work / "corrupt.npz").write_bytes(bytes(corrupt))
    (work / "noise.npz").write_bytes(bytes(range(256)) * 4)
    os.mkfifo(work / "fifo.npz")
    (work / "folder.npz").mkdir()
    np.save(work / "single.npy", np.zeros(3))
    return {
        "truncated": work / "truncated.npz",
        "corrupt": work / "corrupt.npz",
        "noise": work / "noise.npz",
        "fifo": work / "fifo.npz",
        "folder": work / "folder.npz",
        "missing": work / "missing.npz",
        "npy": work / "single.npy",
    }


BAD_NPZ = [
    ("truncated", "cannot read it as .npz"),
    ("corrupt", "CRC"),
    ("noise", "cannot read it as .npz"),
    ("fifo", "not a regular file"),
    ("folder", "not a regular file"),
    ("missing", "No such file"),
    ("npy", "not an .npz"),
]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--timeout", "-1"], "timeout must be"),
        (["--timeout", "nan"], "timeout must be"),
        (["--inputs", "corrupt"], "CRC"),
        (["--inputs", "fifo"], "not a regular file"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else None,
)
def test_unusable_verify_options_are_usage_errors(work: Path, args: list[str], expect: str) -> None:
    files = _bad_inputs(work)
    args = [str(files[a]) if a in files else a for a in args]
    out = work / "out" / "model.folded.onnx"
    run = run_bnfold("model.onnx", "-o", str(out), *args, cwd=work, tmpdir=work / "tmp", timeout=60)
    assert run.returncode == 2, (run.returncode, run.stderr)
    err = one_line_error(run)
    assert expect in err, err
    assert "--timeout" not in err  # the API's words, not the command line's
    assert leftovers(work) == []


@pytest.mark.parametrize(("kind", "expect"), BAD_NPZ, ids=[k for k, _ in BAD_NPZ])
def test_api_refuses_unusable_npz_before_any_child(
    tmp_path: Path, kind: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold.verification import run as verification

    def no_child(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("a child was started")

    monkeypatch.setattr(verification, "run_child", no_child)
    path = _bad_inputs(tmp_path)[kind]
    model = conv_bn()
    with pytest.raises(UsageError, match=expect) as info:
        verify(model, model, inputs=path)
    assert "\n" not in str(info.value) and "--inputs" not in str(info.value)


def test_timeout_inf_means_no_limit(work: Path) -> None:
    run = run_bnfold("model.onnx", "-o", "out/m.onnx", "--timeout", "inf", cwd=work)
    assert run.returncode == 0, run.stderr
    assert (work / "out" / "m.onnx").is_file()


@pytest.mark.parametrize("timeout", [-1.0, 0.0, math.nan, -math.inf])
def test_api_refuses_bad_timeouts(timeout: float) -> None:
    with pytest.raises(UsageError, match="timeout must be"):
        VerifyOptions(timeout=timeout)
    model = conv_bn()
    with pytest.raises(UsageError, match="timeout must be"):
        verify(model, model, timeout=timeout)


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("blocked")


def test_api_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    model = conv_bn()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with pytest.raises(UsageError, match="not a regular file"):
            verify(model, model, inputs=fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- item 14: samples are made, run and compared one at a time ----------------------------------


def test_samples_are_made_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a sample is made, no array of an earlier sample is still alive."""
    import weakref

    from bnfold.runtime import inputs
    from bnfold.verification import worker as _worker

    original, folded = tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = conv_bn()
    onnx.save(model, str(original))
    onnx.save(fold_model(model).model, str(folded))
    made: list[weakref.ref[np.ndarray]] = []
    alive_before: list[int] = []
    real = inputs.random_array

    def tracked(rng: np.random.Generator, elem_type: int, shape: tuple[int, ...]) -> np.ndarray:
        alive_before.append(sum(r() is not None for r in made))
        array = real(rng, elem_type, shape)
        made.append(weakref.ref(array))
        return array

    monkeypatch.setattr(inputs, "random_array", tracked)
    request = {
        "backend": "onnxruntime",
        "original": str(original),
        "candidate": str(folded),
        "input_shapes": {},
        "inputs": None,
        "samples": 20,
        "seed": 3,
        "rtol": None,
        "atol": None,
        "output_tolerances": {},
    }
    result = _worker.run_request(request)
    assert result["status"] == "ok" and result["outputs"][0]["passed"]
    assert result["outputs"][0]["size"] == 20 * 6 * 8 * 8
    assert len(alive_before) == 20 and max(alive_before) == 0, alive_before


def test_lazy_samples_are_the_same_random_stream() -> None:
    """Made lazily, the samples are the very arrays made all at once before (same seed)."""
    from bnfold.runtime.inputs import InputSpec, make_feeds, random_array

    specs = [InputSpec("x", 1, ("N", 3)), InputSpec("k", 7, (2,)), InputSpec("m", 9, (4,))]
    feeds, shapes, _ = make_feeds(specs, samples=4, seed=11)
    rng = np.random.default_rng(11)
    expected = []
    for _ in range(4):
        expected.append({s.name: random_array(rng, s.elem_type, shapes[s.name]) for s in specs})
    got = list(feeds)
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys() and all(np.array_equal(g[k], e[k]) for k in g)


# -- item 12: a full temporary folder: one line, exit 3, nothing left --------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "full"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _fill(folder: Path, free_pages: int) -> None:
    for p in folder.iterdir():
        p.unlink()
    (folder / "filler").write_bytes(b"\0" * (64 - 4 * free_pages) * 1024)


def test_full_tmpdir_is_one_line_exit_3(work: Path, small_tmpfs: Path) -> None:
    folded = work / "folded.onnx"
    onnx.save(fold_model(conv_bn()).model, str(folded))
    codes = []
    for free in (1, 4):  # room for the request only; room for request and result
        _fill(small_tmpfs, free)
        run = run_bnfold("verify", "model.onnx", str(folded), "-q", cwd=work, tmpdir=small_tmpfs)
        codes.append(run.returncode)
        assert run.returncode in (0, 3), run.stderr
        if run.returncode == 3:
            err = one_line_error(run)
            assert "cannot write the temporary folder" in err and "No space left" in err, err
        assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
    assert codes == [3, 0], codes


def test_full_output_folder_is_one_line_exit_3(work: Path, small_tmpfs: Path) -> None:
    """fold_file verifies in its staging folder beside the output: TMPDIR is never written."""
    codes = []
    for free in (2, 5):  # room for the staged model and the request only; room for all
        _fill(small_tmpfs, free)
        out = small_tmpfs / "model.folded.onnx"
        run = run_bnfold("model.onnx", "-o", str(out), "-q", cwd=work, tmpdir=work / "tmp")
        codes.append(run.returncode)
        assert run.returncode in (0, 3), run.stderr
        left = sorted(p.name for p in small_tmpfs.iterdir())
        if run.returncode == 3:
            assert "No space left" in one_line_error(run)
            assert left == ["filler"]
        else:
            assert left == ["filler", "model.folded.onnx"]
        assert list((work / "tmp").iterdir()) == []
    assert codes == [3, 0], codes


def test_truncated_or_missing_result_is_a_crash_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result the child left half-written or not at all is a "crash", not a traceback."""
    from bnfold.runtime.child import run_child

    for text in ("", '{"status": "ok", "outp', "[1, 2]"):
        module = tmp_path / f"fake_child_{len(text)}.py"
        module.write_text(
            f"import sys, pathlib\npathlib.Path(sys.argv[2]).write_text({text!r})\nsys.exit(1)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))
        work = tmp_path / f"work{len(text)}"
        work.mkdir()
        result = run_child(module.stem, {}, work, 30)
        assert result["status"] == "crash", result
        assert "exited with code 1" in result["message"]


# -- item 7: bnfold killed while it verifies: its child dies and removes its folders -----------


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc; zombies count as gone)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_bnfold_leaves_no_child_and_no_folders(work: Path, sig: signal.Signals) -> None:
    onnx.save(conv_bn(shape=[1, 3, 128, 128]), str(work / "model.onnx"))  # ~25 ms a sample
    out = work / "out" / "model.folded.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(work / "tmp")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnfold", "model.onnx", "-o", str(out), "--samples", "100000"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (kids := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kids, "the verification child never started"
        time.sleep(1.0)  # into the comparison loop
        assert all(_alive(k) for k in kids)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == (-sig if sig == signal.SIGKILL else 128 + sig)
        deadline = time.monotonic() + 5
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(k) for k in kids), "the verification child outlived bnfold"
        assert leftovers(work) == []  # no output, no staging folder, no work folder
    finally:
        if proc.poll() is None:
            proc.kill()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    kids = _children(pid)
    return kids + [d for k in kids for d in _descendants(k)]


def test_sigterm_stops_a_parallel_batch(work: Path) -> None:
    """-j: the worker processes unwind and go, the batch does not run on to its other models."""
    models = work / "models"
    models.mkdir()
    for i in range(4):
        onnx.save(conv_bn(shape=[1, 3, 128, 128]), str(models / f"m{i}.onnx"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(work / "tmp")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnfold", "models", "-j", "2", "--samples", "100000"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            family = _descendants(proc.pid)
            if (
                sum(
                    "_worker" in (Path("/proc") / str(p) / "cmdline").read_text()
                    for p in family
                    if _alive(p)
                )
                >= 2
            ):
                break
            time.sleep(0.05)
        time.sleep(0.5)
        family = _descendants(proc.pid)
        assert len(family) >= 4, family  # two batch workers, each with its verification child
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(p) for p in family)
        assert sorted(p.name for p in models.iterdir()) == [f"m{i}.onnx" for i in range(4)]
        assert list((work / "tmp").iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in family:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
