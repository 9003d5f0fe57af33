"""What ``bnfold bench`` shows a person, on constructed reports (fixed numbers, no timing): a
speedup whose 95% interval holds 1 is "no measurable difference", never a number; the report
fits 80 columns without cutting a configuration; and the plot's geometry: medians labelled at
the median, a panel for every batch size (or a note saying which), the legend off the data."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import pytest

from bnfold.bench.report import BenchReport, Latency, Speedup, SpeedupGroup
from bnfold.cli.schema import SCHEMA
from tests.test_bench import _chain, _document, _fake_benchmark, _report
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


def test_bench_baseline_at_80_columns_cuts_no_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnfold.bench.run

    model = tmp_path / "net.onnx"  # matched with the baseline's by file name
    onnx.save(_chain(), model)
    monkeypatch.setattr(bnfold.bench.run, "benchmark", _fake_benchmark(_report(1.0, str(model))))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(_document(_report(0.8))))  # the folded run was faster then
    code, out, _ = invoke("bench", str(model), "--baseline", str(baseline), columns=80)
    assert code == 1
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\u2026" not in out
    verdicts = [line.split()[0] for line in lines if "net.onnx" in line and "@" in line]
    assert verdicts == ["same", "same", "slower"]
    assert "0.800 -> 1.000 ms, +25.0% [" in out
    # wide enough: the table
    code, out, _ = invoke("bench", str(model), "--baseline", str(baseline), columns=200)
    assert code == 1 and "then ms" in out and "verdict" in out


# -- the plot ---------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures ``plot`` saves, kept (and drawn) for their geometry."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures: list[Any] = []
    save = Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        figures.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _renderer(fig: Any) -> Any:
    """The figure drawn again as it was saved (closing it took its canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _title(ax: Any) -> str:
    """A panel's title as one line of plain spaces."""
    return " ".join(ax.get_title(loc="left").replace("\u00a0", " ").split())


def _distribution_axes(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_xlabel().startswith("latency per run")]


def test_plot_labels_each_median_at_the_median(tmp_path: Path, drawn: list[Any]) -> None:
    from bnfold.bench.plot import plot

    report = _batches(str(tmp_path / "net.onnx"), [1, 4])
    plot(report, tmp_path / "p.png")
    (fig,) = drawn
    renderer = _renderer(fig)
    panels = _distribution_axes(fig)
    assert panels
    for ax in panels:
        batch = 1 if "batch 1:" in _title(ax) else 4
        runs = [r for r in report.runs if r.batch_size == batch]
        labels = [t for t in ax.texts if t.get_text().startswith("median ")]
        assert len(labels) == len(runs)
        for row, (label, run) in enumerate(zip(labels, runs, strict=True), 1):
            assert label.get_text() == f"median {run.median_ms:.3g} ms"
            x, _ = label.get_position()
            assert x == run.median_ms  # at the median, not at a whisker
            p95 = float(np.percentile(run.samples_ms, 95))
            assert abs(x - p95) > 0.1 * run.median_ms  # the two are far apart here
            # drawn over the median: its box spans the median's place on the axis
            box = label.get_window_extent(renderer)
            at = ax.transData.transform((run.median_ms, row))
            assert box.x0 <= at[0] <= box.x1
            # and next to its own row: nearer its row than the one before
            centre = ax.transData.inverted().transform(((box.x0 + box.x1) / 2, box.y0))[1]
            assert row - 0.5 < centre <= row


def test_plot_shows_every_batch_size(tmp_path: Path, drawn: list[Any]) -> None:
    from bnfold.bench.plot import plot

    report = _batches(str(tmp_path / "net.onnx"), [1, 4, 16])
    plot([report, _report(path="/somewhere/other.onnx")], tmp_path / "p.png")
    (fig,) = drawn
    titles = [_title(ax) for ax in _distribution_axes(fig)]
    assert len(titles) == 4
    for b in (1, 4, 16):
        assert sum(f"net.onnx, batch {b}:" in t for t in titles) == 1
    # each panel's title has its own batch size's speedups
    batch_1 = next(t for t in titles if "batch 1:" in t)
    batch_4 = next(t for t in titles if "batch 4:" in t)
    assert "no measurable difference (0.78x to 2.24x)" in batch_1 and "1.69x" not in batch_1
    assert "vs original 1.10x [1.08, 1.13]" in batch_4
    per_item = [ax for ax in fig.axes if ax.get_xlabel() == "batch size"]
    assert len(per_item) == 1
    assert [int(float(t)) for t in per_item[0].get_xticks()] == [1, 4, 16]


def test_plot_of_more_batch_sizes_than_fit_says_which_it_shows(
    tmp_path: Path, drawn: list[Any]
) -> None:
    from bnfold.bench.plot import plot

    sizes = list(range(1, 41))
    report = _batches(str(tmp_path / "wide.onnx"), sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layout matplotlib gave up on warns
        plot(report, tmp_path / "p.png")
    (fig,) = drawn
    titles = [_title(ax) for ax in _distribution_axes(fig)]
    assert 2 <= len(titles) <= 24  # MAX_PANELS: a figure of 40 panels is 120 inches high
    shown = [int(t.split("batch ")[1].split(":")[0]) for t in titles]
    assert shown[0] == 1 and shown[-1] == 40  # the smallest and the largest
    note = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert f"distributions at batch sizes {', '.join(map(str, shown))} of 1, 2, 3" in note
    assert fig.get_figheight() < 100  # inches: the figure's size is bounded


def test_plot_keeps_the_legend_off_the_data(tmp_path: Path, drawn: list[Any]) -> None:
    from bnfold.bench.plot import plot

    report = _batches(str(tmp_path / "net.onnx"), [1, 2, 4, 8])
    plot([report, _batches(str(tmp_path / "other.onnx"), [1, 8])], tmp_path / "p.png")
    (fig,) = drawn
    renderer = _renderer(fig)
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    figure_box = fig.bbox
    for ax, legend in legends:
        box = legend.get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer))  # outside the data area
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1  # and in the picture
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1
        for other in fig.axes:  # over no other panel either
            assert not box.overlaps(other.get_window_extent(renderer))


def test_plot_of_more_models_than_fit_says_how_many_it_shows(
    tmp_path: Path, drawn: list[Any]
) -> None:
    from bnfold.bench.plot import plot

    reports = [_report(path=f"/models/m{k}.onnx") for k in range(30)]
    plot(reports, tmp_path / "p.png")
    (fig,) = drawn
    assert len(_distribution_axes(fig)) == 24
    assert "the first 24 of 30 models are shown" in " ".join(t.get_text() for t in fig.texts)
