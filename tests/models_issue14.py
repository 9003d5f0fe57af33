"""End-to-end models for issue 14's patterns, torch-free (onnx.helper + numpy), deterministic:
a YOLOv5 BottleneckCSP block, a PointNet-like MatMul -> Transpose -> BN stack, a LeNet-like head
(BN -> Flatten/Reshape -> Gemm/MatMul) and an MLP with input BN."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.builders import bn_stats, make_model, tensor, vinfo


class Net:
    """Nodes and initializers with unique names, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(tensor(name, array))
        return name

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(self, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
        return self.const("w", self.rng.normal(0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32))

    def conv(self, x: str, cin: int, cout: int, k: int = 1, bias: bool = False) -> str:
        inputs = [x, self.weight(cout, cin, k, k)]
        if bias:
            inputs.append(self.const("b", self.rng.normal(0, 0.5, cout).astype(np.float32)))
        return self.op("Conv", inputs, pads=[k // 2] * 4)

    def bn(self, x: str, channels: int) -> str:
        p = bn_stats(self.rng, channels)
        names = [self.const(k, v) for k, v in p.items()]
        return self.op("BatchNormalization", [x, *names], epsilon=1e-3)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def cbs(self, x: str, cin: int, cout: int, k: int = 1) -> str:
        """Conv -> BN -> SiLU (YOLOv5's Conv)."""
        return self.silu(self.bn(self.conv(x, cin, cout, k), cout))

    def model(self, inputs: list[onnx.ValueInfoProto], out: list[Any]) -> onnx.ModelProto:
        """The model whose output "y" (of shape ``out``) is the last node's."""
        self.nodes[-1].output[0] = "y"
        self.nodes[-1].name = "y"
        output = vinfo("y", TensorProto.FLOAT, out)
        return make_model(self.nodes, inputs, [output], self.inits, name="issue14")


def csp_block() -> tuple[onnx.ModelProto, int]:
    """YOLOv5 BottleneckCSP(c1=8, c2=8, n=1), then a C3-like join of two Conv -> BN branches
    under one more BN. Returns (model, BatchNormalizations that must fold: all 8)."""
    net = Net(140)
    x = "x"
    c_ = 4
    a = net.cbs(x, 8, c_)  # cv1
    m = net.cbs(net.cbs(a, c_, c_), c_, c_, 3)  # Bottleneck
    m = net.op("Add", [a, m])
    y1 = net.conv(m, c_, c_)  # cv3: plain Conv2d
    y2 = net.conv(x, 8, c_)  # cv2: plain Conv2d
    cat = net.op("Concat", [y1, y2], axis=1)
    z = net.op("LeakyRelu", [net.bn(cat, 2 * c_)], alpha=0.1)
    z = net.cbs(z, 2 * c_, 8)  # cv4
    # both Concat producers are Conv -> BN: they fold first, the outer BN next
    left = net.bn(net.conv(z, 8, 3, 3, bias=True), 3)
    right = net.bn(net.conv(z, 8, 5), 5)
    cat2 = net.op("Concat", [left, right], axis=-3)
    net.op("Relu", [net.bn(cat2, 8)])
    return net.model([vinfo("x", TensorProto.FLOAT, [1, 8, 12, 12])], [1, 8, 12, 12]), 8


def point_cloud() -> tuple[onnx.ModelProto, int]:
    """PointNet-like: per-point Linear layers on [N, L, C] as MatMul (no bias, then with a bias
    Add) -> Transpose -> BN1d, a max pool over the points, and a Linear reshaped to [N, C, 1, 1]
    -> BN2d."""
    net = Net(141)
    h = net.op("MatMul", ["x", net.weight(3, 16)])  # no bias: the fold creates one
    h = net.op("Relu", [net.bn(net.op("Transpose", [h], perm=[0, 2, 1]), 16)])
    h = net.op("Transpose", [h], perm=[0, 2, 1])
    h = net.op("MatMul", [h, net.weight(16, 24)])
    h = net.op("Add", [h, net.const("b", net.rng.normal(0, 0.5, 24).astype(np.float32))])
    h = net.op("Relu", [net.bn(net.op("Transpose", [h], perm=[0, 2, 1]), 24)])
    g = net.op("ReduceMax", [h], axes=[2], keepdims=0)  # [N, 24]
    g = net.op("MatMul", [g, net.weight(24, 12)])
    g = net.op("Reshape", [g, net.const("shape", np.array([0, 12, 1, 1], dtype=np.int64))])
    g = net.op("Relu", [net.bn(g, 12)])
    net.op("Flatten", [g])
    return net.model([vinfo("x", TensorProto.FLOAT, [2, 32, 3])], [2, 12]), 3


def lenet_head() -> tuple[onnx.ModelProto, int]:
    """LeNet-like: conv/pool features, a BN after the last pool (nothing before it to fold into),
    Flatten -> Gemm; a second BN -> Reshape(-1, C*H*W) -> MatMul head."""
    net = Net(142)
    f = net.op("Relu", [net.conv("x", 1, 6, 5, bias=True)])
    f = net.op("MaxPool", [f], kernel_shape=[2, 2], strides=[2, 2])
    f = net.op("Relu", [net.conv(f, 6, 8, 3, bias=True)])
    f = net.op("MaxPool", [f], kernel_shape=[2, 2], strides=[2, 2])  # [N, 8, 4, 4]
    h = net.op("Flatten", [net.bn(f, 8)], axis=1)
    h = net.op(
        "Relu",
        [
            net.op(
                "Gemm", [h, net.weight(10, 128), net.const("c", np.ones(10, np.float32))], transB=1
            )
        ],
    )
    p = net.op("AveragePool", [f], kernel_shape=[2, 2], strides=[2, 2])  # [N, 8, 2, 2]
    q = net.op("Reshape", [net.bn(p, 8), net.const("shape", np.array([-1, 32], dtype=np.int64))])
    q = net.op("MatMul", [q, net.weight(32, 10)])
    net.op("Add", [h, q])
    return net.model([vinfo("x", TensorProto.FLOAT, [3, 1, 16, 16])], [3, 10]), 2


def mlp_input_bn() -> tuple[onnx.ModelProto, int]:
    """An MLP on tabular features with BatchNorm1d on the raw input, MatMul + Add layers and a
    hidden BN after one of them."""
    net = Net(143)
    h = net.op("MatMul", [net.bn("x", 10), net.weight(10, 16)])
    h = net.op("Add", [h, net.const("b", net.rng.normal(0, 0.5, 16).astype(np.float32))])
    h = net.op("Relu", [h])
    h = net.op("MatMul", [h, net.weight(16, 8)])
    h = net.op("Add", [h, net.const("b", net.rng.normal(0, 0.5, 8).astype(np.float32))])
    h = net.op("Relu", [net.bn(h, 8)])
    net.op("Gemm", [h, net.weight(8, 3)])
    return net.model([vinfo("x", TensorProto.FLOAT, ["N", 10])], ["N", 3]), 2


MODELS = {
    "csp_block": csp_block,
    "point_cloud": point_cloud,
    "lenet_head": lenet_head,
    "mlp_input_bn": mlp_input_bn,
}
