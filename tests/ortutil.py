"""Run models in onnxruntime as written (ORT_DISABLE_ALL) and compare original with folded."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from bnfold import FoldResult, fold_model
from tests.builders import count_ops


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(r) for r in session.run(None, dict(feeds))]


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 1) data for every graph input of fixed shape (dynamic dims become 2)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _valid(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError:
        return False
    return True


def assert_fold_matches(
    model: onnx.ModelProto,
    *,
    expect_folded: int,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
    bn_folded: int | None = None,
) -> FoldResult:
    """Fold ``model``, check the count (``expect_folded`` decisions, of them ``bn_folded``
    BatchNormalizations, default all), validity and that outputs match the original's."""
    before = model.SerializeToString()
    result = fold_model(model)
    assert model.SerializeToString() == before, "fold_model changed its input"
    assert result.report.folded == expect_folded, result.report.to_dict()
    assert count_ops(result.model, "BatchNormalization") == count_ops(
        model, "BatchNormalization"
    ) - (expect_folded if bn_folded is None else bn_folded)
    if _valid(model):  # a valid model stays valid
        onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, seed)
    want = run_ort(model, feeds)
    got = run_ort(result.model, feeds)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        scale = max(1.0, float(np.abs(w.astype(np.float64)).max()))
        np.testing.assert_allclose(
            g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol * scale
        )
    return result
