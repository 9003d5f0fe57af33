"""``bnfold.benchmark`` and ``bnfold bench``: real onnxruntime sessions on tiny models with tiny
budgets, the shape of what they report, every bad option, and the baseline gate and bootstrap
on constructed numbers. Nothing here asserts that anything is fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import benchmark
from bnfold.bench.baseline import compare_baseline
from bnfold.bench.report import BenchReport, Latency, ModelStats, Speedup, SpeedupGroup
from bnfold.bench.stats import median_ci, ratio_ci, ratio_of_intervals, relative_half_width
from bnfold.errors import InputError, UsageError
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo
from tests.test_cli import digest, files, invoke

FAST = ["-n", "3", "--warmup", "0", "--max-seconds", "0.2"]
QUICK: dict[str, Any] = {"iterations": 3, "warmup": 0, "max_seconds": 0.2}
#: keys of a run that are not latencies; every other key must end in _ms
NOT_LATENCY = {
    "model",
    "provider",
    "optimization",
    "batch_size",
    "threads",
    "iterations",
    "input_shapes",
}


def _chain(seed: int = 0, layers: int = 3, batch: int | str = "N") -> onnx.ModelProto:
    """Conv -> BN -> Relu, ``layers`` times: every BN foldable; ``batch`` is the first axis."""
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
        [vinfo("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [vinfo(x, TensorProto.FLOAT, [batch, 8, 16, 16])],
        inits,
    )


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), path)
    return path


@pytest.fixture
def fixed(tmp_path: Path) -> Path:
    path = tmp_path / "fixed.onnx"
    onnx.save(_chain(1, layers=1, batch=1), path)
    return path


def _check_intervals(doc: dict[str, Any]) -> None:
    """Every latency key ends in _ms, every interval holds its median."""
    for bench in doc["benches"]:
        assert isinstance(bench["noisy"], bool)
        for run in bench["runs"]:
            assert all(k.endswith("_ms") for k in run if k not in NOT_LATENCY), run.keys()
            lo, hi = run["ci95_ms"]
            assert lo <= run["median_ms"] <= hi
            assert run["median_ms"] <= run["p90_ms"]
        for group in [bench["speedup"], *bench["speedups"]]:
            for key, s in group.items():
                if key.startswith("vs_"):
                    assert s["ci95"][0] <= s["median"] <= s["ci95"][1]


# -- the API on real sessions ---------------------------------------------------------------


def test_benchmark_times_three_configurations_and_folds_in_memory(chain: Path) -> None:
    before = digest(chain)
    report = benchmark(chain, threads=1, input_shapes={"x": [2, 3, 16, 16]}, **QUICK)
    assert [(r.model, r.optimization) for r in report.runs] == [
        ("original", "disable_all"),
        ("original", "basic"),
        ("folded", "disable_all"),
    ]
    for r in report.runs:
        assert r.iterations == report.rounds >= 3 and len(r.samples_ms) == r.iterations
        assert r.provider == "CPUExecutionProvider" and r.threads == 1 and r.batch_size == 2
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
        assert r.ci95_ms[0] <= r.median_ms <= r.ci95_ms[1]
        assert r.session_ms > 0
    assert report.original.nodes == 9 and report.original.batchnorms == 3
    assert report.folded.nodes == 6 and report.folded.batchnorms == 0
    assert report.folded.path is None  # folded in memory, nothing written
    assert report.fold is not None and report.fold.folded == 3
    assert report.input_shapes == {"x": [2, 3, 16, 16]}
    assert set(report.speedup) == {"vs_original", "vs_ort_basic"}
    s = report.speedup["vs_original"]
    expected = report.run("original", "disable_all").median_ms / report.folded_run.median_ms
    assert s.median == pytest.approx(expected)
    assert s.ci95[0] <= s.median <= s.ci95[1]
    assert digest(chain) == before
    assert files(chain.parent) == {"chain.onnx"}


def test_benchmark_of_a_given_folded_file(chain: Path, tmp_path: Path) -> None:
    folded = tmp_path / "chain.folded.onnx"
    assert invoke(str(chain), "-o", str(folded), "-q")[0] == 0
    report = benchmark(chain, folded, **QUICK)
    assert report.folded.path == str(folded)
    assert report.folded.size_bytes == folded.stat().st_size
    assert report.folded.batchnorms == 0 and report.fold is None


def test_benchmark_levels_and_the_budget(chain: Path) -> None:
    """Every level the user asks for, a speedup against each; an impossible target runs until
    the budget ends and says so."""
    report = benchmark(chain, levels=["disable", "extended", "all"], target_ci=1e-9, **QUICK)
    assert [r.optimization for r in report.runs] == [
        "disable_all",
        "extended",
        "all",
        "disable_all",
    ]
    assert set(report.speedup) == {"vs_original", "vs_ort_extended", "vs_ort_all"}
    assert report.noisy and report.seconds >= 0.2


def test_benchmark_batch_sizes_on_a_symbolic_batch(chain: Path) -> None:
    report = benchmark(chain, batch_sizes=[1, 3], **QUICK)
    assert [(r.model, r.batch_size) for r in report.runs] == [
        ("original", 1),
        ("original", 1),
        ("folded", 1),
        ("original", 3),
        ("original", 3),
        ("folded", 3),
    ]
    assert all(r.input_shapes["x"][0] == r.batch_size for r in report.runs)
    assert [g.batch_size for g in report.speedups] == [1, 3]
    assert report.skipped_batch_sizes == ()


def test_benchmark_fixed_batch_gives_a_reason_not_a_crash(fixed: Path) -> None:
    report = benchmark(fixed, batch_sizes=[1, 4], **QUICK)
    assert {r.batch_size for r in report.runs} == {1}
    assert report.skipped_batch_sizes == (
        {"batch_size": 4, "reason": "batch axis of input 'x' is fixed at 1"},
    )
    only_other = benchmark(fixed, batch_sizes=[4], **QUICK)
    assert {r.batch_size for r in only_other.runs} == {1}  # the model's own batch
    assert any("no --batch-size fits" in n for n in only_other.notes)


def test_benchmark_refuses_what_does_not_fit(chain: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="iterations"):
        benchmark(chain, iterations=0)
    with pytest.raises(UsageError, match="does not fit"):
        benchmark(chain, input_shapes={"x": [1, 4, 16, 16]}, **QUICK)
    with pytest.raises(UsageError, match="level"):
        benchmark(chain, levels=["fast"])
    with pytest.raises(UsageError, match="batch-size"):
        benchmark(chain, batch_sizes=[0])
    with pytest.raises(UsageError, match="target-ci"):
        benchmark(chain, target_ci=0)
    with pytest.raises(UsageError, match="CPUExecutionProvider") as info:
        benchmark(chain, providers=["NoSuchExecutionProvider"], **QUICK)
    assert "NoSuchExecutionProvider" in info.value.message
    other = tmp_path / "other.onnx"
    m = _chain()
    m.graph.input[0].name = "image"
    m.graph.node[0].input[0] = "image"
    onnx.save(m, other)
    with pytest.raises(UsageError, match="different inputs"):
        benchmark(chain, other, **QUICK)
    with pytest.raises(InputError, match="no such file"):
        benchmark(tmp_path / "missing.onnx")


# -- the command ------------------------------------------------------------------------------


def test_bench_several_models_and_a_folder(chain: Path, tmp_path: Path) -> None:
    sub = tmp_path / "zoo"
    sub.mkdir()
    onnx.save(_chain(2, layers=1), sub / "a.onnx")
    onnx.save(_chain(3, layers=2), sub / "b.onnx")
    code, out, err = invoke("bench", str(chain), str(sub), *FAST, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["bnfold"] and doc["command"] == "bench" and doc["exit_code"] == 0
    assert doc["error"] is None and doc["baseline"] is None
    names = [Path(b["model"]).name for b in doc["benches"]]
    assert names == ["chain.onnx", "a.onnx", "b.onnx"]
    _check_intervals(doc)
    first = doc["benches"][0]
    assert [r["optimization"] for r in first["runs"]] == ["disable_all", "basic", "disable_all"]
    assert first["original"]["batchnorms"] == 3 and first["folded"]["batchnorms"] == 0
    assert first["fold"]["folded"] == 3
    assert set(first["speedup"]) == {"vs_original", "vs_ort_basic"}


def test_bench_command_table_on_stdout(chain: Path) -> None:
    code, out, err = invoke("bench", str(chain), *FAST)
    # stderr holds warnings at most (a noisy machine says so); the report is on stdout
    assert code == 0 and all(line.startswith("warning:") for line in err.splitlines()), err
    assert "folded @ ORT_DISABLE_ALL" in out and "original @ ORT_ENABLE_BASIC" in out
    assert "95% CI" in out
    # a speedup, or none that this tiny model's noise lets one measure
    text = " ".join(out.split())
    assert "the original's speed" in text or "no measurable difference from the original" in text


def test_bench_batch_sizes_and_levels_from_the_command(chain: Path, fixed: Path) -> None:
    code, out, err = invoke(
        "bench", str(chain), str(fixed), *FAST, "--batch-size", "1", "--batch-size", "2",
        "--level", "basic", "--level", "all", "--threads", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    _check_intervals(doc)
    sym, fix = doc["benches"]
    assert {(r["batch_size"], r["optimization"]) for r in sym["runs"]} == {
        (b, o) for b in (1, 2) for o in ("basic", "all", "disable_all")
    }
    assert all(r["threads"] == 1 for r in sym["runs"])
    assert set(sym["speedup"]) == {"vs_ort_basic", "vs_ort_all"}
    assert fix["skipped_batch_sizes"] == [
        {"batch_size": 2, "reason": "batch axis of input 'x' is fixed at 1"}
    ]
    assert "batch axis of input 'x' is fixed at 1" in err


def test_bench_unavailable_provider_lists_the_available_ones(chain: Path) -> None:
    code, out, err = invoke("bench", str(chain), "--provider", "NoSuchExecutionProvider", "--json")
    assert code == 2
    assert "NoSuchExecutionProvider" in err and "available: " in err
    assert "CPUExecutionProvider" in err
    assert json.loads(out)["error"]["type"] == "UsageError"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--iterations", "0"], 2, "iterations"),
        (["--level", "fast"], 2, "disable, basic, extended or all"),
        (["--folded-level", "max"], 2, "--level 'max'"),
        (["--batch-size", "0"], 2, "batch-size"),
        (["--max-seconds", "0"], 2, "max-seconds"),
        (["--input-shape", "x:1x3"], 2, "does not fit"),
        (["--input-shape", "nope"], 2, "input-shape"),
        (["--folded", "x.onnx", "."], 2, "exactly one MODEL"),
        (["--baseline", "missing.json"], 2, "cannot read"),
    ],
)
def test_bench_command_bad_options(
    chain: Path, args: list[str], code: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(chain.parent)
    got, _, err = invoke("bench", str(chain), *args)
    assert got == code
    assert message in err
    assert files(chain.parent) == {"chain.onnx"}


def test_bench_missing_model_json(tmp_path: Path) -> None:
    code, out, err = invoke("bench", str(tmp_path / "missing.onnx"), "--json")
    assert code == 3 and "no such file" in err
    doc = json.loads(out)
    assert doc["error"]["type"] == "InputError"
    assert doc["benches"][0]["error"]["type"] == "InputError"


def test_bench_one_bad_model_does_not_stop_the_others(chain: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    code, out, _ = invoke("bench", str(broken), str(chain), *FAST, "--json")
    assert code == 3
    doc = json.loads(out)
    assert [b["error"] is None for b in doc["benches"]] == [False, True]
    assert doc["benches"][1]["runs"]


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
    code, out, err = invoke("bench", str(chain), *FAST, "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in " ".join(out.split())


def test_plot_of_several_models_batch_sizes_and_a_long_name(tmp_path: Path) -> None:
    """Constructed reports (no timing): a batch-size panel when several sizes ran, and a title
    that fits however long the model's name."""
    pytest.importorskip("matplotlib")
    from dataclasses import replace

    from bnfold.bench.plot import plot

    one = _report(path="/models/" + "a-model-with-a-rather-long-name-" * 4 + ".onnx")
    batches = replace(
        one,
        runs=one.runs
        + tuple(replace(r, batch_size=8, median_ms=r.median_ms * 6) for r in one.runs),
    )
    png = tmp_path / "many.png"
    plot([batches, _report(folded_ms=0.9)], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_help_and_import_do_not_load_onnxruntime() -> None:
    code = (
        "import sys, bnfold, bnfold.cli, bnfold.bench.run, bnfold.cli.bench\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "from bnfold.cli import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "--provider" in run.stdout and "--baseline" in run.stdout


# -- the baseline gate, on constructed numbers -------------------------------------------------


def _latency(model: str, level: str, median: float, spread: float = 0.01) -> Latency:
    samples = tuple(median * (1 + spread * v) for v in np.linspace(-1, 1, 41))
    return Latency(
        model=model,
        provider="CPUExecutionProvider",
        optimization=level,
        batch_size=1,
        threads=1,
        session_ms=3.0,
        median_ms=median,
        p90_ms=median * (1 + 0.8 * spread),
        ci95_ms=(median * (1 - spread / 4), median * (1 + spread / 4)),
        min_ms=median * (1 - spread),
        mean_ms=median,
        iterations=len(samples),
        input_shapes={"x": [1, 3, 16, 16]},
        samples_ms=samples,
    )


def _report(
    folded_ms: float = 1.0, path: str = "/somewhere/net.onnx", original_ms: float = 1.2
) -> BenchReport:
    stats = ModelStats(path, 1000, 9, 3)
    speedup = original_ms / folded_ms
    return BenchReport(
        model=path,
        original=stats,
        folded=ModelStats(None, 900, 6, 0),
        runs=(
            _latency("original", "disable_all", original_ms),
            _latency("original", "basic", original_ms / 1.2),
            _latency("folded", "disable_all", folded_ms),
        ),
        speedups=(
            SpeedupGroup(
                "CPUExecutionProvider",
                1,
                1,
                {"vs_original": Speedup(speedup, (speedup * 0.99, speedup * 1.01))},
            ),
        ),
        noisy=False,
        rounds=41,
        seconds=0.5,
        iterations=20,
        warmup=5,
        threads=1,
        target_ci=0.02,
        max_seconds=10.0,
        input_shapes={"x": [1, 3, 16, 16]},
    )


def _document(*reports: BenchReport, with_samples: bool = True) -> dict[str, Any]:
    benches = [r.to_dict() for r in reports]
    if not with_samples:
        for b in benches:
            for run in b["runs"]:
                del run["samples_ms"]
    return {"bnfold": "0.1.0", "command": "bench", "exit_code": 0, "benches": benches}


@pytest.mark.parametrize("with_samples", [True, False])
def test_compare_baseline_equal_slower_faster(with_samples: bool) -> None:
    now = _report(folded_ms=1.0, path="here/net.onnx")  # matched by file name, not folder
    same = compare_baseline([now], _document(_report(1.0), with_samples=with_samples))
    assert not same.regressed and len(same.changes) == 3 and not same.unmatched
    assert {c.verdict for c in same.changes} == {"same"}
    assert all(c.ci95[0] <= c.ratio <= c.ci95[1] for c in same.changes)
    slower = compare_baseline([now], _document(_report(0.8), with_samples=with_samples))
    folded = next(c for c in slower.changes if c.run == "folded")
    assert slower.regressed and folded.verdict == "slower"
    assert folded.ratio == pytest.approx(1.25)
    faster = compare_baseline([now], _document(_report(1.3), with_samples=with_samples))
    assert not faster.regressed
    assert next(c for c in faster.changes if c.run == "folded").verdict == "faster"
    # within the allowed slowdown: not a regression
    slight = compare_baseline([now], _document(_report(0.98)), max_slowdown=0.05)
    assert not slight.regressed


def test_compare_baseline_relative_cancels_a_slower_machine() -> None:
    """A machine 25% slower today slows the original as much as the folded model: the plain
    gate calls that a regression, the relative one does not; a folded model that lost its
    speedup is a regression either way."""
    now = _report(folded_ms=1.0, original_ms=1.2)
    busy_then = _document(_report(folded_ms=0.8, original_ms=0.96))
    assert compare_baseline([now], busy_then).regressed
    relative = compare_baseline([now], busy_then, relative=True)
    assert not relative.regressed and relative.relative
    folded = next(c for c in relative.changes if c.run == "folded")
    assert folded.relative == pytest.approx(1.0)
    assert folded.relative_ci95 is not None
    assert folded.relative_ci95[0] <= 1.0 <= folded.relative_ci95[1]
    lost = _document(_report(folded_ms=0.8, original_ms=1.2))  # then 1.5x, now 1.2x
    again = compare_baseline([now], lost, relative=True)
    assert again.regressed
    assert next(c for c in again.changes if c.run == "folded").relative == pytest.approx(1.25)


def test_compare_baseline_needs_the_same_configuration() -> None:
    other = _report()
    doc = _document(other)
    for run in doc["benches"][0]["runs"]:
        run["threads"] = 4
    result = compare_baseline([_report()], doc)
    assert not result.changes and len(result.unmatched) == 3 and not result.regressed


def _fake_benchmark(report: BenchReport) -> Any:
    def fake(model: Any, folded: Any = None, **_: Any) -> BenchReport:
        return report

    return fake


@pytest.mark.parametrize(
    ("then_ms", "flags", "code"),
    [(1.0, [], 0), (1.3, [], 0), (0.8, [], 1), (1.0, ["--relative"], 0), (0.8, ["--relative"], 1)],
)
def test_bench_baseline_gate_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then_ms: float, flags: list[str], code: int
) -> None:
    """The gate as CI runs it; the benchmark itself is replaced so that the numbers are fixed."""
    import bnfold.bench.run

    model = tmp_path / "net.onnx"
    onnx.save(_chain(), model)
    monkeypatch.setattr(bnfold.bench.run, "benchmark", _fake_benchmark(_report(1.0, str(model))))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(_document(_report(then_ms))))
    got, out, err = invoke("bench", str(model), "--baseline", str(baseline), *flags, "--json")
    assert got == code, err
    doc = json.loads(out)
    assert doc["exit_code"] == code
    assert doc["baseline"]["regressed"] is (code == 1)
    assert ("slower:" in err) is (code == 1)  # the verdict reaches the log even with --json
    got, out, _ = invoke("bench", str(model), "--baseline", str(baseline), *flags)
    assert got == code and "against" in out and ("slower:" in out) is (code == 1)


def test_bench_baseline_that_is_no_bench_document(chain: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"command": "fold", "models": []}))
    code, _, err = invoke("bench", str(chain), "--baseline", str(bad))
    assert code == 2 and "not a bnfold bench document" in err


def test_bench_baseline_from_a_previous_run_matches_every_configuration(chain: Path) -> None:
    """A real round trip: the previous run's JSON is accepted and matched (its verdicts depend
    on this machine's noise, so only the matching is asserted)."""
    code, out, _ = invoke("bench", str(chain), *FAST, "--json")
    assert code == 0
    baseline = chain.parent / "baseline.json"
    baseline.write_text(out)
    code, out, err = invoke("bench", str(chain), *FAST, "--baseline", str(baseline), "--json")
    assert code in (0, 1), err
    doc = json.loads(out)
    assert len(doc["baseline"]["changes"]) == 3 and doc["baseline"]["unmatched"] == []


# -- the bootstrap, on synthetic samples -------------------------------------------------------


def test_median_ci_holds_the_median_and_narrows_with_samples() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 0.3, 200)
    first = median_ci(x)
    assert first == median_ci(x[::-1])
    median, lo, hi = first
    assert median == pytest.approx(float(np.median(x)))
    assert lo < median < hi
    _, lo4, hi4 = median_ci(
        rng.lognormal(0, 0.3, 800)
    )  # four times the samples: a narrower interval
    assert hi4 - lo4 < hi - lo
    assert median_ci([2.0]) == (2.0, 2.0, 2.0)
    assert median_ci([1.0, 2.0, 3.0]) == (2.0, 1.0, 3.0)  # few samples: all of them
    # 95% of intervals from fresh samples hold the true median (1.0 for lognormal(0, s))
    held = sum(
        lo <= 1.0 <= hi for _, lo, hi in (median_ci(rng.lognormal(0, 1, 101)) for _ in range(400))
    )
    assert 0.92 * 400 <= held <= 0.99 * 400


def test_ratio_ci_pairs_rounds_so_shared_noise_cancels() -> None:
    rng = np.random.default_rng(0)
    load = rng.lognormal(0, 0.5, 300)  # each round's machine load, shared by both configurations
    folded = 1.0 * load * rng.lognormal(0, 0.01, 300)
    original = 1.25 * load * rng.lognormal(0, 0.01, 300)
    paired = ratio_ci(original, folded, seed=0)
    unpaired = ratio_ci(original, folded, paired=False, seed=0)
    assert paired == ratio_ci(original, folded, seed=0)  # deterministic
    assert paired[1] <= paired[0] <= paired[2]
    assert paired[1] < 1.25 < paired[2]
    assert relative_half_width(paired) * 4 < relative_half_width(unpaired)
    assert ratio_ci([2.0, 2.0], [1.0, 1.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="same length"):
        ratio_ci([1.0, 2.0], [1.0])


def test_ratio_of_intervals_without_samples() -> None:
    ratio, lo, hi = ratio_of_intervals((2.0, 1.9, 2.1), (1.0, 0.95, 1.05))
    assert ratio == 2.0 and lo < 2.0 < hi
    assert ratio_of_intervals((2.0, 2.0, 2.0), (1.0, 1.0, 1.0)) == (2.0, 2.0, 2.0)
