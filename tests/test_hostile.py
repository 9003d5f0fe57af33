"""Hostile and careless input: what a model file or a command line says must never make bnfold
read or write outside the model's and the output's folders, modify its input, leave files
behind, or end in a traceback. Each test is one case an outside tester found."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bnfold.cli.app import app
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def conv_bn(seed: int = 0, channels: int = 32) -> onnx.ModelProto:
    """Conv (a weight large enough to be external and lazily read) -> BN."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (channels, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
    ]
    inits = [tensor("w", w), *bn_initializers("bn", bn_params(rng, channels))]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [vinfo("y", TensorProto.FLOAT, ["N", channels, 6, 6])],
        inits,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its contents' digest."""
    return {
        str(p.relative_to(folder)): digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> None:
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        location=location or path.name + ".data",
        size_threshold=0,
    )


def set_external(path: Path, **entries: str) -> None:
    """Rewrite every external tensor's entries (location, offset, length) in the model file."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        info.update(entries)
        del t.external_data[:]
        for k, v in info.items():
            if v is not None:
                e = t.external_data.add()
                e.key, e.value = k, v
    onnx.save(m, path)


def assert_one_line_error(code: int, err: str, expected_code: int, needle: str) -> None:
    assert code == expected_code, err
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# -- 1. external data outside the model's folder ------------------------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "device"])
@pytest.mark.parametrize("command", ["fold", "inspect"])
def test_external_data_outside_the_folder_is_refused(
    tmp_path: Path, how: str, command: str
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "m.onnx"
    save_external(conv_bn(), path)
    (folder / "m.onnx.data").unlink()
    location = {
        "dotdot": "../secret.bin",
        "absolute": str(secret),
        "symlink": "link.bin",
        "device": "/dev/zero",
    }[how]
    if how == "symlink":
        (folder / "link.bin").symlink_to(secret)
    set_external(path, location=location)
    before = tree(tmp_path)
    code, out, err = invoke(
        command,
        str(path),
        "-o" if command == "fold" else "--json",
        *([str(tmp_path / "out.onnx")] if command == "fold" else []),
    )
    assert code == 3, err
    assert "only files in the model's folder are read" in err, err
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written, the secret copied nowhere
    if command == "inspect":
        doc = json.loads(out)
        assert doc["models"][0]["error"]["type"] == "InputError"


# -- 8. external data entries and weights that do not fit their dims ------------------------------


def _damaged(tmp: Path, case: str) -> Path:
    path = tmp / f"{case}.onnx"
    if case == "short_inline":
        m = conv_bn()
        w = m.graph.initializer[0]
        w.raw_data = w.raw_data[:-8]
        onnx.save(m, path)
        return path
    if case == "short_typed":
        m = conv_bn()
        g = next(t for t in m.graph.initializer if t.name == "bn_scale")
        values = onnx.numpy_helper.to_array(g)[:-1]
        g.ClearField("raw_data")
        g.float_data.extend(values.tolist())
        onnx.save(m, path)
        return path
    save_external(conv_bn(), path)
    if case == "zero_byte_file":
        (tmp / f"{case}.onnx.data").write_bytes(b"")
        set_external(path, offset=None, length=None)  # type: ignore[arg-type]
    elif case == "offset_abc":
        set_external(path, offset="abc")
    elif case == "negative_length":
        set_external(path, length="-5")
    elif case == "past_the_end":
        set_external(path, offset=str(1 << 40))
    return path


DAMAGED = [
    "short_inline",
    "short_typed",
    "zero_byte_file",
    "offset_abc",
    "negative_length",
    "past_the_end",
]


@pytest.mark.parametrize("case", DAMAGED)
@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
def test_damaged_tensor_data_is_one_line_exit_3(tmp_path: Path, case: str, command: str) -> None:
    path = _damaged(tmp_path, case)
    before = tree(tmp_path)
    code, out, err = invoke(command, str(path))
    assert_one_line_error(code, err, 3, str(path))
    assert out == ""
    assert tree(tmp_path) == before


def test_damaged_model_in_a_batch_does_not_stop_the_others(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        onnx.save(conv_bn(i), src / f"good{i}.onnx")
    for case in DAMAGED:
        _damaged(src, case)
    code, out, err = invoke(str(src), "-o", str(tmp_path / "out"), "--json", "--no-verify")
    assert code == 3, err
    doc = json.loads(out)
    statuses = {Path(m["input"]).stem: m["status"] for m in doc["models"]}
    assert statuses == {
        **{f"good{i}": "folded" for i in range(4)},
        **dict.fromkeys(DAMAGED, "error"),
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"good{i}.onnx" for i in range(4)
    ]


# -- 2. terminal escape sequences in file and node names -----------------------------------------

ESC_NAME = "evil\x1b]0;pwned\x07\x1b[2J\u202e"


@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
def test_control_characters_never_reach_the_terminal(tmp_path: Path, command: str) -> None:
    m = conv_bn()
    m.graph.node[0].name = "conv" + ESC_NAME
    m.graph.node[1].name = "bn" + ESC_NAME
    path = tmp_path / f"{ESC_NAME}.onnx"
    onnx.save(m, path)
    broken = tmp_path / f"broken{ESC_NAME}.onnx"
    broken.write_bytes(b"\x1b[2J not a model")
    for args in (
        [command, str(path)],
        [command, str(broken)],
        [command, str(path), "--bogus\x1b[2J"],
    ):
        code, out, err = invoke(*args)
        both = out + err  # the report on stdout, errors on stderr: neither drives the terminal
        assert "\x1b" not in both and "\x07" not in both and "\u202e" not in both, both
        assert "\\x1b" in both, both  # shown, as an escape
    code, out, err = invoke(
        command, str(path), "--json", "--no-verify" if command == "fold" else "-q"
    )
    assert code == (1 if command == "check" else 0), err
    assert "\x1b" not in out  # JSON escapes them as \u001b
    names = {d["node"] for d in json.loads(out)["models"][0]["report"]["decisions"]}
    assert names == {"bn" + ESC_NAME}


def test_control_characters_in_debug_traceback(tmp_path: Path) -> None:
    broken = tmp_path / f"broken{ESC_NAME}.onnx"
    broken.write_bytes(b"\x1b[2J not a model")
    code, _, err = invoke("inspect", str(broken), "--debug")
    assert code == 3 and "Traceback" in err and "\x1b" not in err


# -- 3. an output whose data file is the input's --------------------------------------------------


def test_output_data_file_that_is_the_inputs_data_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_external(conv_bn(), folder / "a.onnx", location="b.onnx.data")
    before = tree(tmp_path)
    code, _, err = invoke(str(folder / "a.onnx"), "-o", str(folder / "b.onnx"))
    assert_one_line_error(code, err, 2, "external data of the input")
    assert tree(tmp_path) == before
    code, _, err = invoke(str(folder / "a.onnx"), "-o", str(folder / "b.onnx.data"))
    assert_one_line_error(code, err, 2, "would overwrite")
    assert tree(tmp_path) == before


# -- 4. model and data change together or not at all ----------------------------------------------


def _fail_second_replace(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """os.replace succeeds for the data file and fails for the model (as on an immutable file)."""
    calls: list[str] = []
    real = os.replace

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        calls.append(str(dst))
        if str(dst).endswith(".onnx") and ".previous" not in str(src):
            raise PermissionError(1, "Operation not permitted")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("in_place", [False, True])
def test_failed_model_rename_restores_the_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    path = tmp_path / "a.onnx"
    save_external(conv_bn(0), path)
    out = tmp_path / "out.onnx"
    if not in_place:
        save_external(conv_bn(1), out)  # an earlier output, with its own data
    before = tree(tmp_path)
    calls = _fail_second_replace(monkeypatch)
    args = [str(path), "--in-place"] if in_place else [str(path), "-o", str(out)]
    code, _, err = invoke(*args)
    assert_one_line_error(code, err, 3, "cannot write")
    assert any(c.endswith(".onnx.data") for c in calls)  # the data file had been replaced
    assert tree(tmp_path) == before  # ... and was put back: every file as it was
    assert not list(tmp_path.glob(".bnfold-*"))


def test_immutable_output_keeps_model_and_data_consistent(tmp_path: Path) -> None:
    """The outside tester's case, where chattr works (root on ext4/xfs)."""
    import shutil
    import subprocess

    path = tmp_path / "a.onnx"
    save_external(conv_bn(0), path)
    out = tmp_path / "out.onnx"
    save_external(conv_bn(1), out)
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode
    ):
        pytest.skip("chattr +i is not available here")
    try:
        before = tree(tmp_path)
        code, _, err = invoke(str(path), "-o", str(out))
        assert_one_line_error(code, err, 3, "cannot write")
        assert tree(tmp_path) == before
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


# -- 5, 6. batches: name clashes, outputs inside the input folder, -o FILE for several ----------


def test_two_models_with_one_output_name_are_refused(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        onnx.save(conv_bn(), tmp_path / sub / "m.onnx")
    before = tree(tmp_path)
    code, out, err = invoke(
        str(tmp_path / "a" / "m.onnx"),
        str(tmp_path / "b" / "m.onnx"),
        "-o",
        str(tmp_path / "out"),
        "--json",
    )
    assert code == 2 and "would both be written to" in err, err
    assert json.loads(out)["exit_code"] == 2
    assert tree(tmp_path) == before


def test_output_replacing_another_input_of_the_batch_is_refused(tmp_path: Path) -> None:
    onnx.save(conv_bn(0), tmp_path / "a.onnx")
    onnx.save(conv_bn(1), tmp_path / "a.folded.onnx")
    before = tree(tmp_path)
    code, _, err = invoke(str(tmp_path / "a.onnx"), str(tmp_path / "a.folded.onnx"))
    assert code == 2 and "another model of this run" in err, err
    assert tree(tmp_path) == before


def test_output_folder_inside_the_input_folder_is_not_refolded(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    onnx.save(conv_bn(0), src / "a.onnx")
    onnx.save(conv_bn(1), src / "sub" / "b.onnx")
    out = src / "out"
    for _ in range(2):
        code, doc, err = invoke(str(src), "-o", str(out), "--json", "--no-verify")
        assert code == 0, err
        assert sorted(Path(m["input"]).name for m in json.loads(doc)["models"]) == [
            "a.onnx",
            "b.onnx",
        ]
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*.onnx")) == [
        "a.onnx",
        "out/a.onnx",
        "out/sub/b.onnx",
        "sub/b.onnx",
    ]
    code, _, err = invoke(str(src), "-o", str(src))
    assert code == 2 and "the output folder is the input folder" in err


def test_one_output_file_for_several_models_is_a_usage_error(tmp_path: Path) -> None:
    onnx.save(conv_bn(0), tmp_path / "a.onnx")
    onnx.save(conv_bn(1), tmp_path / "b.onnx")
    before = tree(tmp_path)
    code, _, err = invoke(
        str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "-o", str(tmp_path / "x.onnx")
    )
    assert_one_line_error(code, err, 2, "several models cannot be written to one file")
    assert tree(tmp_path) == before and not (tmp_path / "x.onnx").exists()


# -- 11. output and input paths ----------------------------------------------------------------


def test_output_ending_in_a_separator_is_a_folder(tmp_path: Path) -> None:
    onnx.save(conv_bn(), tmp_path / "a.onnx")
    code, _, err = invoke(
        str(tmp_path / "a.onnx"), "-o", str(tmp_path / "newdir") + "/", "--no-verify"
    )
    assert code == 0, err
    assert (tmp_path / "newdir").is_dir() and (tmp_path / "newdir" / "a.onnx").is_file()


def test_output_name_too_long_is_one_line_exit_3(tmp_path: Path) -> None:
    onnx.save(conv_bn(), tmp_path / "a.onnx")
    before = tree(tmp_path)
    code, _, err = invoke(str(tmp_path / "a.onnx"), "-o", str(tmp_path / ("a" * 300 + ".onnx")))
    assert_one_line_error(code, err, 3, "File name too long")
    assert tree(tmp_path) == before and not list(tmp_path.glob(".bnfold-*"))


def test_special_and_unreadable_inputs_are_exit_3(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    code, _, err = invoke("inspect", str(fifo))
    assert_one_line_error(code, err, 3, "not a regular file")
    locked = tmp_path / "locked.onnx"
    onnx.save(conv_bn(), locked)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: mode 000 is still readable")
        code, _, err = invoke("inspect", str(locked))
        assert_one_line_error(code, err, 3, "Permission denied")
    finally:
        locked.chmod(0o644)


def test_unreadable_input_as_another_user(tmp_path: Path) -> None:
    """As root the test above cannot see mode 000; run the real command as nobody."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    tmp_path.chmod(0o755)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A clone or a virtual environment in a private folder (under /root, any 0700 parent) is
    # out of that user's reach: then this test cannot run, which says nothing about bnfold.
    probe = subprocess.run(
        [*as_nobody, "-c", "import bnfold.cli"], capture_output=True, text=True, env=env
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"another user cannot run this interpreter and bnfold here ({reason})")
    locked = tmp_path / "locked.onnx"
    onnx.save(conv_bn(), locked)
    locked.chmod(0)
    proc = subprocess.run(
        [*as_nobody, "-m", "bnfold", "inspect", str(locked)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert_one_line_error(proc.returncode, proc.stderr, 3, "Permission denied")


# -- 15. inspect never serializes folded weights ---------------------------------------------------


def test_inspect_does_not_store_folded_weights_into_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.model.proto

    path = tmp_path / "ext.onnx"
    save_external(conv_bn(), path)

    real = bnfold.model.proto.make_tensor

    def refuse(name: str, values: np.ndarray, elem_type: int) -> TensorProto:
        if values.size:  # storable() validates dtypes with an empty one
            raise AssertionError("inspect serialized a folded weight into the model")
        return real(name, values, elem_type)

    monkeypatch.setattr(bnfold.model.proto, "store", refuse)
    monkeypatch.setattr(bnfold.model.proto, "make_tensor", refuse)
    code, out, err = invoke("inspect", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["models"][0]["report"]["bn_folded"] == 1


def test_parallel_jobs_creating_one_output_folder_do_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs of a batch make the same mirrored folder at the same moment."""
    from bnfold.model.staging import make_folders

    target = tmp_path / "out" / "sub" / "m.onnx"
    target.parent.mkdir(parents=True)  # the other job was first
    monkeypatch.setattr(Path, "exists", lambda self: False)  # ... after this job looked
    assert make_folders(target.parent) == []  # none of them is this job's to remove
    assert target.parent.is_dir()


@pytest.mark.parametrize("which", ["original", "candidate"])
def test_verify_refuses_external_data_outside_the_folder(tmp_path: Path, which: str) -> None:
    """``bnfold verify A B`` runs models in onnxruntime: their external data is checked first,
    so a model cannot make it read (and compare the numbers of) a file outside its folder."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    folder = tmp_path / "models"
    folder.mkdir()
    good, evil = folder / "good.onnx", folder / "evil.onnx"
    onnx.save(conv_bn(), good)
    save_external(conv_bn(), evil)
    (folder / "evil.onnx.data").unlink()
    set_external(evil, location="../secret.bin")
    pair = (evil, good) if which == "original" else (good, evil)
    code, out, err = invoke("verify", str(pair[0]), str(pair[1]), "--json")
    assert code == 3, err
    assert "only files in the model's folder are read" in err
    assert json.loads(out)["error"]["type"] == "InputError"


# -- found by the third outside pass ------------------------------------------------------------


def _with_sparse_external(tmp: Path) -> Path:
    """A model whose sparse initializer's values point at a file outside its folder."""
    folder = tmp / "m"
    folder.mkdir()
    (tmp / "secret.bin").write_bytes(b"\x00" * 64)
    m = conv_bn()
    values = tensor("sv", np.ones(2, np.float32))
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "8")):
        e = values.external_data.add()
        e.key, e.value = k, v
    sparse = helper.make_sparse_tensor(values, tensor("si", np.array([0, 1], np.int64)), [4])
    m.graph.sparse_initializer.append(sparse)
    path = folder / "m.onnx"
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("command", ["fold", "inspect", "check"])
def test_sparse_tensor_with_external_data_is_refused(tmp_path: Path, command: str) -> None:
    path = _with_sparse_external(tmp_path)
    before = tree(tmp_path)
    code, _, err = invoke(command, str(path))
    assert_one_line_error(code, err, 3, "sparse tensor")
    assert tree(tmp_path) == before


def test_repeated_external_data_key_and_string_external_data_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_external(conv_bn(), path)
    m = onnx.load(path, load_external_data=False)
    w = next(t for t in m.graph.initializer if t.name == "w")
    e = w.external_data.add()
    e.key, e.value = "location", "m.onnx.data"
    onnx.save(m, path)
    code, _, err = invoke("inspect", str(path))
    assert_one_line_error(code, err, 3, "given more than once")
    save_external(conv_bn(), path)
    m = onnx.load(path, load_external_data=False)
    next(t for t in m.graph.initializer if t.name == "w").data_type = TensorProto.STRING
    onnx.save(m, path)
    code, _, err = invoke("inspect", str(path))
    assert_one_line_error(code, err, 3, "string tensors cannot have external data")


def test_negative_seed_is_a_usage_error(tmp_path: Path) -> None:
    onnx.save(conv_bn(), tmp_path / "m.onnx")
    code, out, err = invoke(str(tmp_path / "m.onnx"), "--seed", "-1", "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2, err
    assert not (tmp_path / "m.folded.onnx").exists()


@pytest.mark.parametrize("case", ["cycle", "two_producers", "initializer_and_output"])
def test_graphs_that_cannot_work_are_exit_3(tmp_path: Path, case: str) -> None:
    m = conv_bn()
    if case == "cycle":  # the Conv reads the BN's output
        m.graph.node[0].input[0] = "y"
        m.graph.input[0].name = "unused"
    elif case == "two_producers":
        m.graph.node.append(helper.make_node("Identity", ["x"], ["c"], name="again"))
    else:
        m.graph.node.append(helper.make_node("Identity", ["x"], ["w"], name="shadow"))
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    for command in ("fold", "inspect"):
        code, _, err = invoke(command, str(path))
        assert_one_line_error(code, err, 3, "damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_declared_shapes_cannot_make_a_split_allocate(tmp_path: Path) -> None:
    """A custom op hides the Gemm's input shape, so the shapes after it are all declared; they
    claim 2^40 columns split in 2 channels. Repeating the BN's parameters per column would
    allocate 8 TiB: the columns are bounded by the Gemm's weight instead (shape_mismatch)."""
    rng = np.random.default_rng(0)
    k = 2**40
    nodes = [
        helper.make_node("Op", ["a"], ["c"], name="custom", domain="custom"),
        helper.make_node("Gemm", ["c", "w"], ["m"], name="fc"),
        helper.make_node("Reshape", ["m", "target"], ["r"], name="reshape"),
        bn_node("r", "y", "bn"),
    ]
    inits = [
        tensor("w", rng.normal(0, 0.5, (16, 128)).astype(np.float32)),
        tensor("target", np.array([0, 2, k // 2], dtype=np.int64)),
        *bn_initializers("bn", bn_params(rng, 2)),
    ]
    lies = [vinfo("m", TensorProto.FLOAT, [3, k]), vinfo("r", TensorProto.FLOAT, [3, 2, k // 2])]
    model = make_model(
        nodes,
        [vinfo("a", TensorProto.FLOAT, [3, 16])],
        [vinfo("y", TensorProto.FLOAT, None)],
        inits,
        value_info=lies,
        extra_opsets=[("custom", 1)],
    )
    onnx.save(model, tmp_path / "m.onnx")
    code, out, err = invoke(str(tmp_path / "m.onnx"), "--no-verify", "--json")
    assert code == 0, err
    (decision,) = json.loads(out)["models"][0]["report"]["decisions"]
    assert decision["reason"] == "shape_mismatch"
    assert "more than the B [16, 128] of Gemm 'fc' has columns" in decision["message"]
