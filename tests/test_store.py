"""The tensor store: weights left in the file, held arrays and lazy folds give the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold import fold_file
from bnfold.model.reading import open_model_file
from bnfold.numerics import arith as numerics
from tests.builders import bn_initializers, bn_node, bn_params, make_model, tensor, vinfo


def chain_model(dtype: type = np.float32, *, tiny_var: bool = False) -> onnx.ModelProto:
    """Conv -> BN -> BN (the second folds into what the first made) -> ConvTranspose -> BN."""
    rng = np.random.default_rng(3)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = rng.normal(0, 0.3, (24, 16, 3, 3)).astype(dtype)
    wt = rng.normal(0, 0.3, (24, 6, 2, 2)).astype(dtype)  # 2 groups of 12 -> 12 out channels
    p1, p2 = bn_params(rng, 24, dtype), bn_params(rng, 24, dtype)
    p3 = bn_params(rng, 12, dtype)
    if tiny_var:
        p1["var"][:] = 0
        p1["scale"][:] = 1e4
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "b1", "bn1"),
        bn_node("b1", "b2", "bn2"),
        helper.make_node("ConvTranspose", ["b2", "wt"], ["t"], name="deconv", group=2),
        bn_node("t", "y", "bn3"),
    ]
    inits = [tensor("w", w), tensor("wt", wt)]
    for prefix, p in (("bn1", p1), ("bn2", p2), ("bn3", p3)):
        inits += bn_initializers(prefix, p)
    return make_model(nodes, [vinfo("x", elem, [1, 16, 5, 5])], [vinfo("y", elem, None)], inits)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fold_both_ways(tmp: Path, model: onnx.ModelProto, external: bool, mp: pytest.MonkeyPatch):
    src = tmp / "m.onnx"
    if external:
        onnx.save_model(model, src, save_as_external_data=True, location="m.data", size_threshold=0)
    else:
        onnx.save(model, src)
    (tmp / "eager").mkdir()
    (tmp / "lazy").mkdir()
    eager = fold_file(src, tmp / "eager" / "out.onnx", verify=None)
    mp.setattr(numerics, "LAZY_FROM", 1)  # every folded weight lazy, in chunks of 64 bytes
    mp.setattr(numerics, "CHUNK_BYTES", 64)
    lazy = fold_file(src, tmp / "lazy" / "out.onnx", verify=None)
    return eager, lazy


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("external", [False, True])
def test_lazy_folds_write_the_bytes_eager_folds_write(
    tmp_path: Path, dtype: type, external: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, lazy = fold_both_ways(tmp_path, chain_model(dtype), external, monkeypatch)
    assert eager.report.bn_folded == lazy.report.bn_folded == 3
    names = ["out.onnx", "out.onnx.data"] if external else ["out.onnx"]
    assert sorted(p.name for p in (tmp_path / "lazy").iterdir()) == names
    for name in names:
        assert digest(tmp_path / "eager" / name) == digest(tmp_path / "lazy" / name)


def test_lazy_fold_refuses_non_finite_weights_as_eager_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, lazy = fold_both_ways(
        tmp_path, chain_model(np.float16, tiny_var=True), False, monkeypatch
    )
    reasons = [(d.node, d.reason, d.message) for d in eager.report.decisions]
    assert reasons == [(d.node, d.reason, d.message) for d in lazy.report.decisions]
    assert ("bn1_bn", "non_finite") in {(n, r) for n, r, _ in reasons}


def test_lazy_scaled_chunks_are_the_scaled_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(1, 7, 5, 3)).astype(np.float32)
    scale = rng.normal(size=(1, 1, 5, 1))
    lazy = numerics.LazyScaled(values, scale, TensorProto.FLOAT, (7, 5, 3))
    numerics_chunk = numerics.CHUNK_BYTES
    try:
        numerics.CHUNK_BYTES = 16  # one row of 5x3 floats per chunk, along axis 1
        parts = list(lazy.chunks())
    finally:
        numerics.CHUNK_BYTES = numerics_chunk
    assert len(parts) == 7
    want = numerics.scale_round(values, scale, TensorProto.FLOAT).reshape(7, 5, 3)
    np.testing.assert_array_equal(lazy.materialize(), want)
    assert lazy.nbytes == want.nbytes


def test_opened_model_keeps_no_marker_in_its_protos(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        chain_model(), path, save_as_external_data=True, location="m.data", size_threshold=0
    )
    opened = open_model_file(path)
    assert opened.external and set(opened.store.names()) >= {"w", "wt"}
    for t in opened.model.graph.initializer:
        assert not t.external_data and t.data_location == TensorProto.DEFAULT
    assert opened.files() == {path, tmp_path / "m.data"}
