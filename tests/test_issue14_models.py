"""Issue 14's end-to-end models: every BN folds, onnxruntime verifies the written file, and a
second run changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bnfold import fold_file
from tests.builders import count_ops
from tests.models_issue14 import MODELS
from tests.ortutil import random_feeds, run_ort


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_folds_every_bn_and_verifies(name: str, tmp_path: Path) -> None:
    model, expected = MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    assert count_ops(model, "BatchNormalization") == expected
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}.folded.onnx"
    onnx.save(model, src)
    result = fold_file(src, dst)
    assert result.status == "folded", result.to_dict()
    assert result.verification is not None and result.verification.status == "passed"
    assert result.report.bn_folded == expected, result.report.to_dict()
    folded = onnx.load(dst)
    onnx.checker.check_model(folded, full_check=True)
    assert count_ops(folded, "BatchNormalization") == 0
    feeds = random_feeds(model, seed=3)
    for want, got in zip(run_ort(model, feeds), run_ort(folded, feeds), strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    again = fold_file(dst, tmp_path / "again.onnx")
    assert again.status == "unchanged"
