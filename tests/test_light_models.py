"""The "light" model-zoo models shipped inside the onnx wheel (ResNet-50, Inception-v2, ShuffleNet,
DenseNet-121 with every weight made by ConstantOfShape): every BN after a single-consumer Conv
folds, the ConstantOfShape subgraphs it used are gone, and onnxruntime verifies the result."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from bnfold import fold_file
from bnfold.model.graph import ModelIndex
from bnfold.model.nodes import is_op
from tests.builders import count_ops

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["light_resnet50", "light_inception_v2", "light_shufflenet", "light_densenet121"]


def _bns_after_single_use_conv(model: onnx.ModelProto) -> set[str]:
    scope = ModelIndex(model).main
    found = set()
    for node in scope.nodes:
        if not is_op(node, "BatchNormalization"):
            continue
        producer = scope.producer_of(node.input[0])
        if producer is not None and is_op(producer, "Conv") and scope.uses(node.input[0]) == 1:
            found.add(node.output[0])
    return found


@pytest.mark.parametrize("name", MODELS)
def test_light_model_folds_every_bn_after_a_conv_and_verifies(name: str, tmp_path: Path) -> None:
    src = LIGHT / f"{name}.onnx"
    if not src.is_file():
        pytest.skip(f"this onnx wheel does not ship {src.name}")
    model = onnx.load(src)
    expected = _bns_after_single_use_conv(model)
    assert expected  # the check below is not vacuous
    result = fold_file(src, tmp_path / "folded.onnx")
    folded = {
        d.output for d in result.report.decisions if d.folded and d.op == "BatchNormalization"
    }
    assert expected <= folded
    assert result.status == "folded"
    assert result.verification is not None and result.verification.status == "passed"
    out = onnx.load(tmp_path / "folded.onnx")
    assert count_ops(out, "BatchNormalization") == result.report.bn_total - result.report.bn_folded
    # weights now are initializers; the ConstantOfShape nodes that made folded tensors are gone
    assert count_ops(out, "ConstantOfShape") < count_ops(model, "ConstantOfShape")
