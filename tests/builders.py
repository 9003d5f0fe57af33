"""Tiny ONNX models for tests, built with onnx.helper and numpy only.

onnx >= 1.23's ``make_model`` stamps an IR version newer than some onnxruntime releases accept,
so every model here sets ``ir_version`` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17

Dim = int | str | None


def tensor(name: str, array: np.ndarray) -> TensorProto:
    """An initializer (or Constant value) from a numpy array."""
    return numpy_helper.from_array(np.asarray(array), name)


def vinfo(name: str, elem_type: int, shape: Sequence[Dim] | None) -> onnx.ValueInfoProto:
    """A typed value; shape None means unknown rank (legal, though the checker wants a shape)."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    *,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    value_info: Sequence[onnx.ValueInfoProto] = (),
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: Sequence[tuple[str, int]] = (),
    name: str = "test",
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        name,
        list(inputs),
        list(outputs),
        list(initializers),
        value_info=list(value_info),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = ir_version
    return model


def bn_params(
    rng: np.random.Generator, channels: int, dtype: Any = np.float32, *, trained: bool = True
) -> dict[str, np.ndarray]:
    """BatchNormalization statistics that look trained: spread variances, signed gammas, offsets."""
    if trained:
        var = 10.0 ** rng.uniform(-3, 1, channels)
        gamma = rng.uniform(-2, 2, channels)
        mean = rng.normal(0, 1, channels)
        beta = rng.normal(0, 1, channels)
    else:
        var = np.ones(channels)
        gamma = np.ones(channels)
        mean = np.zeros(channels)
        beta = np.zeros(channels)
    return {
        "scale": gamma.astype(dtype),
        "B": beta.astype(dtype),
        "mean": mean.astype(dtype),
        "var": var.astype(dtype),
    }


def bn_node(
    x: str, y: str, prefix: str, *, name: str | None = None, **attrs: Any
) -> onnx.NodeProto:
    """A BatchNormalization reading ``{prefix}_scale``, ``_B``, ``_mean`` and ``_var``."""
    return helper.make_node(
        "BatchNormalization",
        [x, f"{prefix}_scale", f"{prefix}_B", f"{prefix}_mean", f"{prefix}_var"],
        [y],
        name=name or f"{prefix}_bn",
        **attrs,
    )


def bn_initializers(prefix: str, params: dict[str, np.ndarray]) -> list[TensorProto]:
    return [tensor(f"{prefix}_{k}", v) for k, v in params.items()]


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """Nodes of ``op_type`` in the main graph, every subgraph and every local function."""

    def in_graph(nodes: Sequence[onnx.NodeProto]) -> int:
        total = 0
        for node in nodes:
            total += node.op_type == op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += in_graph(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    total += sum(in_graph(g.node) for g in attr.graphs)
        return total

    return in_graph(model.graph.node) + sum(in_graph(f.node) for f in model.functions)


def bn_stats(rng: np.random.Generator, channels: int, dtype: Any = np.float32) -> dict[str, Any]:
    """Statistics that make a wrong fold visible: var in [0.1, 4], gammas of both signs (the first
    one negative), non-zero means and betas."""
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    gamma[0] = -abs(gamma[0])
    return {
        "scale": gamma.astype(dtype),
        "B": rng.normal(0, 1, channels).astype(dtype),
        "mean": rng.normal(0, 1, channels).astype(dtype),
        "var": rng.uniform(0.1, 4.0, channels).astype(dtype),
    }
