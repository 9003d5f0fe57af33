"""``bnfold.benchmark`` and ``bnfold bench``: real onnxruntime sessions on small models, the
numbers they report, and every bad option."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import benchmark
from bnfold.errors import InputError, UsageError
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.test_cli import digest, files, invoke


def _chain(seed: int = 0, layers: int = 3) -> onnx.ModelProto:
    """Conv -> BN -> Relu, ``layers`` times: every BN foldable."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(tensor(f"w{i}", rng.normal(0, 0.3, (8, 8 if i else 3, 3, 3)).astype("f4")))
        inits += bn_initializers(f"bn{i}", bn_params(rng, 8))
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            bn_node(f"c{i}", f"b{i}", f"bn{i}"),
            helper.make_node("Relu", [f"b{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [vinfo(x, TensorProto.FLOAT, ["N", 8, 16, 16])],
        inits,
    )


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), path)
    return path


def test_benchmark_times_three_configurations_and_folds_in_memory(chain: Path) -> None:
    before = digest(chain)
    report = benchmark(chain, iterations=7, warmup=1, threads=1, input_shapes={"x": [2, 3, 16, 16]})
    assert [(r.model, r.optimization) for r in report.runs] == [
        ("original", "disable_all"),
        ("original", "basic"),
        ("folded", "disable_all"),
    ]
    for r in report.runs:
        assert r.iterations == 7
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
        assert r.session_seconds > 0
    assert report.original.nodes == 9 and report.original.batchnorms == 3
    assert report.folded.nodes == 6 and report.folded.batchnorms == 0
    assert report.folded.path is None  # folded in memory, nothing written
    assert report.fold is not None and report.fold.folded == 3
    assert report.input_shapes == {"x": [2, 3, 16, 16]}
    expected = report.run("original", "disable_all").median_ms / report.folded_run.median_ms
    assert math.isclose(report.speedup, expected)
    assert report.speedup > 0 and report.speedup_vs_ort_basic > 0
    assert digest(chain) == before
    assert files(chain.parent) == {"chain.onnx"}


def test_benchmark_of_a_given_folded_file(chain: Path, tmp_path: Path) -> None:
    folded = tmp_path / "chain.folded.onnx"
    assert invoke(str(chain), "-o", str(folded), "-q")[0] == 0
    report = benchmark(chain, folded, iterations=3, warmup=0)
    assert report.folded.path == str(folded)
    assert report.folded.size_bytes == folded.stat().st_size
    assert report.folded.batchnorms == 0 and report.fold is None


def test_benchmark_refuses_what_does_not_fit(chain: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="iterations"):
        benchmark(chain, iterations=0)
    with pytest.raises(UsageError, match="does not fit"):
        benchmark(chain, iterations=1, input_shapes={"x": [1, 4, 16, 16]})
    other = tmp_path / "other.onnx"
    m = _chain()
    m.graph.input[0].name = "image"
    m.graph.node[0].input[0] = "image"
    onnx.save(m, other)
    with pytest.raises(UsageError, match="different inputs"):
        benchmark(chain, other, iterations=1)
    with pytest.raises(InputError, match="no such file"):
        benchmark(tmp_path / "missing.onnx")


def test_bench_command_json(chain: Path) -> None:
    code, out, _ = invoke("bench", str(chain), "-n", "3", "--warmup", "0", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["command"] == "bench" and doc["exit_code"] == 0
    bench = doc["bench"]
    assert [r["optimization"] for r in bench["runs"]] == ["disable_all", "basic", "disable_all"]
    assert bench["original"]["batchnorms"] == 3 and bench["folded"]["batchnorms"] == 0
    assert bench["fold"]["folded"] == 3 and bench["speedup"] > 0


def test_bench_command_table_on_stderr(chain: Path) -> None:
    code, out, err = invoke("bench", str(chain), "-n", "2", "--warmup", "0")
    assert code == 0 and out == ""
    assert "folded @ ORT_DISABLE_ALL" in err and "original @ ORT_ENABLE_BASIC" in err
    assert "x the original's speed" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--iterations", "0"], 2, "iterations"),
        (["--input-shape", "x:1x3"], 2, "does not fit"),
        (["--input-shape", "nope"], 2, "input-shape"),
    ],
)
def test_bench_command_bad_options(chain: Path, args: list[str], code: int, message: str) -> None:
    got, _, err = invoke("bench", str(chain), *args)
    assert got == code
    assert message in err
    assert files(chain.parent) == {"chain.onnx"}


def test_bench_missing_model_json(tmp_path: Path) -> None:
    code, out, err = invoke("bench", str(tmp_path / "missing.onnx"), "--json")
    assert code == 3 and "no such file" in err
    assert json.loads(out)["error"]["type"] == "InputError"


def test_bench_plot_without_matplotlib_is_a_clear_usage_error(
    chain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = invoke("bench", str(chain), "-n", "1", "--plot", str(chain.parent / "l.png"))
    assert code == 2
    assert "pip install 'bnfold[plot]'" in err
    assert files(chain.parent) == {"chain.onnx"}


def test_bench_plot_draws_an_image(chain: Path) -> None:
    pytest.importorskip("matplotlib")
    png = chain.parent / "latency.png"
    code, _, err = invoke("bench", str(chain), "-n", "2", "--warmup", "0", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
