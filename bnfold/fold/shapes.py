"""Tensor shapes for the rules: declared ones first, onnx shape inference on demand.

Shape inference runs at most once per fold, on a copy of the model without its large weights
(they become typed inputs), so it costs graph size, not weight size.
"""

from __future__ import annotations

from bnfold.model import proto
from bnfold.model.graph import Scope, Shape, type_shape, value_shape
from bnfold.model.store import TensorStore


class Shapes:
    """Tensor shapes: declared ones first, onnx shape inference (on a weightless copy) on demand."""

    def __init__(self, model: proto.ModelProto, store: TensorStore | None = None) -> None:
        self.model = model
        self.store = store
        self._inferred: dict[str, Shape] | None = None
        self.failure: str | None = None

    def rank(self, scope: Scope, name: str) -> int | None:
        shape = self.shape(scope, name)
        return None if shape is None else len(shape)

    def shape(self, scope: Scope, name: str) -> Shape | None:
        declared = value_shape(scope, name)
        if declared is not None and all(d is not None for d in declared):
            return declared
        if self._inferred is None:
            self._inferred = self._infer()
        return self._inferred.get(name, declared)

    def _infer(self) -> dict[str, Shape]:
        light = weightless_copy(self.model, self.store)
        try:
            inferred = proto.full_onnx().shape_inference.infer_shapes(light, strict_mode=False)
        except Exception as exc:  # shape inference is best effort; the BN is skipped, with why
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return {}
        ranks: dict[str, Shape] = {}

        def collect(graph: proto.GraphProto) -> None:
            for vi in (*graph.value_info, *graph.output, *graph.input):
                found = type_shape(vi.type) if vi.type.HasField("tensor_type") else None
                if found is not None:
                    ranks.setdefault(vi.name, found)
            for node in graph.node:
                for attr in node.attribute:
                    if attr.type == proto.AttributeProto.GRAPH:
                        collect(attr.g)
                    for g in attr.graphs:
                        collect(g)

        collect(inferred.graph)
        return ranks


def weightless_copy(model: proto.ModelProto, store: TensorStore | None = None) -> proto.ModelProto:
    """The model with large initializers turned into typed inputs: cheap to shape-infer."""
    light = proto.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, dst = model.graph, light.graph
    dst.name = src.name
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if (
            (store is not None and t.name in store)
            or t.data_location == proto.TensorProto.EXTERNAL
            or len(t.raw_data) > 4096
            or len(t.float_data) > 1024
        ):
            if t.name not in declared:
                dst.input.append(
                    proto.full_onnx().helper.make_tensor_value_info(
                        t.name, t.data_type, list(t.dims)
                    )
                )
        else:
            dst.initializer.append(t)
    dst.node.extend(src.node)
    return light
