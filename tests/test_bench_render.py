"""What ``bnfold bench`` shows a person, on constructed reports (fixed numbers, no timing): a
speedup whose 95% interval holds 1 is "no measurable difference", never a number; the report
fits 80 columns without cutting a configuration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

from bnfold.bench.report import BenchReport, Latency, Speedup, SpeedupGroup
from bnfold.cli.schema import SCHEMA
from tests.test_bench import _chain, _fake_benchmark, _report
from tests.test_cli import invoke

#: the speedup from the issue: 1.69x, but its interval holds 1
UNSURE = Speedup(1.69, (0.78, 2.24))
SURE = Speedup(1.10, (1.08, 1.13))


def test_speedup_is_significant_only_when_its_interval_excludes_one() -> None:
    assert not UNSURE.significant
    assert SURE.significant
    assert Speedup(0.9, (0.85, 0.95)).significant  # measurably slower is a difference too
    assert not Speedup(1.0, (1.0, 1.0)).significant
    assert not Speedup(1.05, (1.0, 1.1)).significant  # an end at 1 holds 1
    assert not Speedup(float("nan"), (float("nan"), float("nan"))).significant
    assert UNSURE.to_dict() == {"median": 1.69, "ci95": [0.78, 2.24], "significant": False}
    assert SURE.to_dict()["significant"] is True


def _skewed(model: str, level: str, median: float, batch: int) -> Latency:
    """Latencies with a long right tail: the 95th percentile lies far from the median."""
    rng = np.random.default_rng(len(model) + len(level) + batch)
    samples = median * rng.lognormal(0.0, 0.35, 301)
    samples *= median / float(np.median(samples))
    m = float(np.median(samples))
    return Latency(
        model=model,
        provider="CPUExecutionProvider",
        optimization=level,
        batch_size=batch,
        threads=1,
        session_ms=3.0,
        median_ms=m,
        p90_ms=float(np.percentile(samples, 90)),
        ci95_ms=(m * 0.97, m * 1.03),
        min_ms=float(samples.min()),
        mean_ms=float(samples.mean()),
        iterations=samples.size,
        input_shapes={"x": [batch, 3, 16, 16]},
        samples_ms=tuple(float(v) for v in samples),
    )


def _batches(path: str, sizes: list[int]) -> BenchReport:
    """A model timed at ``sizes``: batch 1 holds the unsure speedup, the others a sure one."""
    runs = []
    for b in sizes:
        runs += [
            _skewed("original", "disable_all", 73.8 * b, b),
            _skewed("original", "basic", 71.2 * b, b),
            _skewed("folded", "disable_all", 70.1 * b, b),
        ]
    groups = tuple(
        SpeedupGroup(
            "CPUExecutionProvider",
            b,
            1,
            {"vs_original": UNSURE if b == 1 else SURE, "vs_ort_basic": SURE},
        )
        for b in sizes
    )
    return replace(_report(path=path), runs=tuple(runs), speedups=groups)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "mobilenetv2.onnx"
    onnx.save(_chain(), path)
    return path


@pytest.mark.parametrize("columns", [80, 200])
def test_bench_headline_says_no_measurable_difference_when_the_interval_holds_one(
    model: Path, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    import bnfold.bench.run

    report = _batches(str(model), [1, 4])
    monkeypatch.setattr(bnfold.bench.run, "benchmark", _fake_benchmark(report))
    code, out, err = invoke("bench", str(model), columns=columns)
    assert code == 0, err
    text = " ".join(out.split())
    assert "1.69x" not in text  # no number quoted for a speedup that may be none
    assert "no measurable difference from the original (0.78x to 2.24x)" in text
    assert "1.10x [1.08, 1.13] the original's speed" in text  # batch 4: a real speedup
    assert "1.10x [1.08, 1.13] ORT basic" in text
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= columns
    # every speedup whole on one line: a narrow terminal breaks between them
    assert any(
        line.strip() == "no measurable difference from the original (0.78x to 2.24x)"
        or "no measurable difference from the original (0.78x to 2.24x), " in line
        for line in lines
    )


def test_bench_json_keeps_the_numbers_and_says_whether_they_are_significant(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.bench.run

    report = _batches(str(model), [1, 4])
    monkeypatch.setattr(bnfold.bench.run, "benchmark", _fake_benchmark(report))
    code, out, err = invoke("bench", str(model), "--json")
    assert code == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    bench = doc["benches"][0]
    assert bench["speedup"]["vs_original"] == {
        "median": 1.69,
        "ci95": [0.78, 2.24],
        "significant": False,
    }
    assert bench["speedups"][1]["vs_original"]["significant"] is True
    assert "no measurable difference" not in out


def test_bench_table_at_80_columns_cuts_no_configuration(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.bench.run

    report = _batches(str(model), [1, 4])
    monkeypatch.setattr(bnfold.bench.run, "benchmark", _fake_benchmark(report))
    code, out, _ = invoke("bench", str(model), columns=80)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "\u2026" not in out  # nothing cut
    for label in ("original @ disable_all", "original @ basic", "folded @ disable_all"):
        assert sum(label in line for line in out.splitlines()) == 2  # batch 1 and 4
    assert "original: 9 nodes, 3 BN, 0.0 MB; folded: 6 nodes, 0 BN, 0.0 MB" in out
    for r in report.runs:  # every interval there, its numbers whole
        assert f"[{r.ci95_ms[0]:.3f}," in out and f"{r.ci95_ms[1]:.3f}]" in out
    # wide enough, the table has a column per number as before
    code, out, _ = invoke("bench", str(model), columns=200)
    assert "original @ ORT_ENABLE_BASIC" in out and "session ms" in out
