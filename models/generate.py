"""Build bnfold's demo model and its benchmark models with onnx.helper and numpy only.

    python models/generate.py demo  [--out models/demo.onnx]
    python models/generate.py bench [--out-dir models/bench] [--only resnet50,mobilenetv2,unet,mlp]
    python models/generate.py large --out PATH --min-bytes N     (external data, may exceed 2 GB)

Every model is deterministic (fixed seeds: the same bytes on every run), IR version 8, opset 17,
float32, with a dynamic batch dimension "N". BatchNormalization statistics look trained, not
fresh: variances spread over orders of magnitude with some ~1e-6 and some exactly 0, signed gammas
with some near zero, non-zero means.

The demo (input "image" [N, 3, 32, 32], outputs "logits" and "features") holds BNs that fold:
  Conv (no bias) -> BN, Conv (bias) -> BN, depthwise Conv -> BN, Conv -> Add(per-channel) -> BN,
  Conv -> Identity -> BN, Conv -> BN -> BN, grouped ConvTranspose -> BN, Gemm -> BN, MatMul -> BN
and BNs that must not fold, one per reason:
  after a Relu (unsupported_producer), after a Conv whose output a residual Add also reads
  (shared_output), with a scale that is also a graph input and so overridable at run time
  (non_constant_param), after a Conv whose output is also a graph output (graph_output).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
EPS = 1e-5


class Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0
        self.overridable: list[str] = []  # initializers also listed as graph inputs

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str | None = None, **attrs: object) -> str:
        name = self.name(base or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def bn_stats(self, c: int) -> dict[str, np.ndarray]:
        """Statistics that look trained: spread variances incl. ~1e-6 and 0, signed gammas."""
        rng = self.rng
        var = 10.0 ** rng.uniform(-3, 1, c)
        if c >= 8:
            var[rng.choice(c, 2, replace=False)] = 1e-6
            var[rng.choice(c, 1)] = 0.0
        gamma = rng.uniform(0.2, 1.2, c) * np.where(rng.random(c) < 0.15, -1.0, 1.0)
        if c >= 8:
            gamma[rng.choice(c, 1)] = 1e-4
        # keep the network well conditioned, as trained ones are: the statistics here are not
        # those of the activations, so cap each channel's gain gamma/sqrt(var + eps) at 1
        gamma = gamma * np.minimum(1.0, np.sqrt(var + EPS))
        mean = rng.normal(0, 0.5, c)
        beta = rng.normal(0, 0.2, c)
        return {"scale": gamma, "B": beta, "mean": mean, "var": var}

    def bn(self, x: str, c: int, *, scale_input: bool = False, gain: float = 1.0) -> str:
        s = self.bn_stats(c)
        s["scale"] = s["scale"] * gain
        names = [self.const(f"bn_{k}", v.astype(np.float32)) for k, v in s.items()]
        if scale_input:
            self.overridable.append(names[0])
        return self.node("BatchNormalization", [x, *names], "bn", epsilon=EPS)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        pad: int | None = None,
    ) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
        inputs = [x, self.const("w", w.astype(np.float32))]
        if bias:
            inputs.append(self.const("b", self.rng.normal(0, 0.1, cout).astype(np.float32)))
        p = k // 2 if pad is None else pad
        return self.node(
            "Conv",
            inputs,
            "conv",
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            group=group,
        )

    def cbr(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        return self.node(
            "Relu", [self.bn(self.conv(x, cin, cout, k, stride=stride, group=group), cout)]
        )

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        for init in self.inits:
            if init.name in self.overridable:
                graph.input.append(
                    helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        model.producer_name = "bnfold models/generate.py"
        return model


def fvi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def rename(b: Builder, old: str, new: str) -> None:
    """Give the value ``old`` the public name ``new`` (for graph outputs)."""
    for node in b.nodes:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]


# -- demo ---------------------------------------------------------------------------------------


def build_demo() -> onnx.ModelProto:
    b = Builder(2024)
    x = b.cbr("image", 3, 16, 3)  # Conv (no bias) -> BN -> Relu
    x = b.node("Relu", [b.bn(b.conv(x, 16, 16, 3, bias=True), 16)])  # Conv (bias) -> BN
    x = b.node("Relu", [b.bn(b.conv(x, 16, 16, 3, group=16), 16)])  # depthwise Conv -> BN
    added = b.node(
        "Add",
        [
            b.conv(x, 16, 24, 1),
            b.const("chan_bias", b.rng.normal(0, 0.1, (24, 1, 1)).astype(np.float32)),
        ],
    )
    x = b.node("Relu", [b.bn(added, 24)])  # Conv -> Add(per-channel) -> BN
    ident = b.node("Identity", [b.conv(x, 24, 24, 3, stride=2)])
    x = b.node("Relu", [b.bn(ident, 24)])  # Conv -> Identity -> BN
    x = b.node("Relu", [b.bn(b.bn(b.conv(x, 24, 32, 3), 32), 32)])  # Conv -> BN -> BN
    # unfoldable: BN after Relu
    x = b.bn(x, 32)
    # unfoldable: the conv output is read by BN and by the residual Add (shared output)
    shared = b.conv(x, 32, 32, 3)
    x = b.node("Relu", [b.node("Add", [b.bn(shared, 32), shared])])
    # unfoldable: BN scale is an initializer that is also a graph input (overridable)
    x = b.node("Relu", [b.bn(b.conv(x, 32, 32, 1), 32, scale_input=True)])
    # grouped ConvTranspose -> BN (upsample 16x16 -> 32x32)
    wt = b.rng.normal(0, np.sqrt(2.0 / (16 * 4)), (32, 8, 2, 2)).astype(np.float32)
    up = b.node("ConvTranspose", [x, b.const("wt", wt)], "deconv", strides=[2, 2], group=2)
    x = b.node("Relu", [b.bn(up, 16)])
    # unfoldable: the conv output is also a graph output
    feat = b.conv(x, 16, 16, 3)
    x = b.node("Relu", [b.bn(feat, 16)])
    rename(b, feat, "features")
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    w1 = b.rng.normal(0, np.sqrt(2.0 / 16), (32, 16)).astype(np.float32)
    g = b.node(
        "Gemm",
        [pooled, b.const("fc1_w", w1), b.const("fc1_b", np.zeros(32, np.float32))],
        "gemm",
        transB=1,
    )
    h = b.node("Relu", [b.bn(g, 32)])  # Gemm -> BN
    w2 = b.rng.normal(0, np.sqrt(2.0 / 32), (32, 10)).astype(np.float32)
    logits = b.bn(b.node("MatMul", [h, b.const("fc2_w", w2)], "matmul"), 10)  # MatMul -> BN
    rename(b, logits, "logits")
    return b.model(
        "bnfold_demo",
        [fvi("image", ["N", 3, 32, 32])],
        [fvi("logits", ["N", 10]), fvi("features", ["N", 16, 32, 32])],
    )


# -- benchmark models ---------------------------------------------------------------------------


def build_resnet50() -> onnx.ModelProto:
    """ResNet-50 topology at full width: bias-free convs, each followed by BN (~100 MB)."""
    b = Builder(50)
    x = b.node(
        "MaxPool",
        [b.cbr("input", 3, 64, 7, stride=2)],
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    )
    cin = 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            cout = width * 4
            y = b.cbr(x, cin, width, 1)
            y = b.cbr(y, width, width, 3, stride=stride)
            y = b.bn(b.conv(y, width, cout, 1), cout, gain=0.3)  # small residual branch
            short = b.bn(b.conv(x, cin, cout, 1, stride=stride), cout) if i == 0 else x
            x = b.node("Relu", [b.node("Add", [y, short])])
            cin = cout
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    w = b.rng.normal(0, np.sqrt(1.0 / 2048), (1000, 2048)).astype(np.float32)
    logits = b.node(
        "Gemm",
        [pooled, b.const("fc_w", w), b.const("fc_b", np.zeros(1000, np.float32))],
        "fc",
        transB=1,
    )
    rename(b, logits, "logits")
    return b.model("resnet50", [fvi("input", ["N", 3, 224, 224])], [fvi("logits", ["N", 1000])])


def build_mobilenetv2() -> onnx.ModelProto:
    """MobileNetV2-like: inverted residuals with depthwise convs and Relu6 (Clip)."""
    b = Builder(2)
    lo = b.const("relu6_min", np.array(0.0, np.float32))
    hi = b.const("relu6_max", np.array(6.0, np.float32))

    def cbr6(x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        return b.node(
            "Clip", [b.bn(b.conv(x, cin, cout, k, stride=stride, group=group), cout), lo, hi]
        )

    x = cbr6("input", 3, 32, 3, 2)
    cin = 32
    for t, c, n, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = cbr6(x, cin, hidden, 1) if t != 1 else x
            y = cbr6(y, hidden, hidden, 3, stride, group=hidden)
            y = b.bn(b.conv(y, hidden, c, 1), c, gain=0.3)
            x = b.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = cbr6(x, cin, 1280, 1)
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    w = b.rng.normal(0, np.sqrt(1.0 / 1280), (1000, 1280)).astype(np.float32)
    logits = b.node(
        "Gemm",
        [pooled, b.const("fc_w", w), b.const("fc_b", np.zeros(1000, np.float32))],
        "fc",
        transB=1,
    )
    rename(b, logits, "logits")
    return b.model("mobilenetv2", [fvi("input", ["N", 3, 224, 224])], [fvi("logits", ["N", 1000])])


def build_unet() -> onnx.ModelProto:
    """UNet-like: Conv->BN->Relu encoder, ConvTranspose(stride 2)->BN decoder, skip Concats."""
    b = Builder(3)
    widths = [32, 64, 128, 256]
    skips = []
    x, cin = "input", 3
    for w in widths:
        x = b.cbr(b.cbr(x, cin, w, 3), w, w, 3)
        skips.append((x, w))
        x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        cin = w
    x = b.cbr(b.cbr(x, cin, 512, 3), 512, 512, 3)
    cin = 512
    for level, (skip, w) in enumerate(reversed(skips)):
        group = 2 if level % 2 else 1
        wt = b.rng.normal(0, np.sqrt(2.0 / (cin * 4 // group)), (cin, w // group, 2, 2))
        up = b.node(
            "ConvTranspose",
            [x, b.const("wt", wt.astype(np.float32))],
            "deconv",
            strides=[2, 2],
            group=group,
        )
        up = b.node("Relu", [b.bn(up, w)])
        x = b.node("Concat", [up, skip], axis=1)
        x = b.cbr(b.cbr(x, 2 * w, w, 3), w, w, 3)
        cin = w
    out = b.conv(x, cin, 2, 1, bias=True)
    rename(b, out, "mask")
    return b.model("unet", [fvi("input", ["N", 3, 128, 128])], [fvi("mask", ["N", 2, 128, 128])])


def build_mlp() -> onnx.ModelProto:
    """MLP: Gemm(transB)->BN, Gemm(C)->BN, MatMul->BN, MatMul->Add->BN, final Gemm."""
    b = Builder(4)

    def weight(k: int, n: int) -> np.ndarray:
        return b.rng.normal(0, np.sqrt(2.0 / k), (k, n)).astype(np.float32)

    x = b.node("Gemm", ["input", b.const("w", weight(512, 1024).T.copy())], "gemm", transB=1)
    x = b.node("Relu", [b.bn(x, 1024)])
    x = b.node(
        "Gemm",
        [
            x,
            b.const("w", weight(1024, 1024)),
            b.const("c", b.rng.normal(0, 0.1, 1024).astype(np.float32)),
        ],
        "gemm",
    )
    x = b.node("Relu", [b.bn(x, 1024)])
    x = b.node("Relu", [b.bn(b.node("MatMul", [x, b.const("w", weight(1024, 512))]), 512)])
    mm = b.node("MatMul", [x, b.const("w", weight(512, 512))])
    x = b.node(
        "Relu",
        [
            b.bn(
                b.node("Add", [mm, b.const("b", b.rng.normal(0, 0.1, 512).astype(np.float32))]), 512
            )
        ],
    )
    out = b.node(
        "Gemm", [x, b.const("w", weight(512, 10)), b.const("c", np.zeros(10, np.float32))], "gemm"
    )
    rename(b, out, "logits")
    return b.model("mlp", [fvi("input", ["N", 512])], [fvi("logits", ["N", 10])])


def build_large(min_bytes: int) -> onnx.ModelProto:
    """A deep stack of wide 3x3 Conv->BN->Relu blocks whose weights total >= ``min_bytes``."""
    b = Builder(5)
    c = 1024
    per_block = c * c * 9 * 4
    x = b.cbr("input", 3, c, 1)
    for _ in range(max(1, -(-min_bytes // per_block))):
        w = b.rng.standard_normal((c, c, 3, 3), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / (c * 9)))
        name = b.const("w", w)
        del w
        conv = b.node("Conv", [x, name], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.node("Relu", [b.bn(conv, c)])
    rename(b, x, "output")
    return b.model("large", [fvi("input", ["N", 3, 8, 8])], [fvi("output", ["N", c, 8, 8])])


BENCH = {
    "resnet50": build_resnet50,
    "mobilenetv2": build_mobilenetv2,
    "unet": build_unet,
    "mlp": build_mlp,
}


def save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description="Build bnfold's demo and benchmark models.")
    sub = ap.add_subparsers(dest="what", required=True)
    demo = sub.add_parser("demo")
    demo.add_argument("--out", type=Path, default=Path(__file__).parent / "demo.onnx")
    bench = sub.add_parser("bench")
    bench.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "bench")
    bench.add_argument("--only", default=",".join(BENCH))
    large = sub.add_parser("large")
    large.add_argument("--out", type=Path, required=True)
    large.add_argument("--min-bytes", type=float, required=True)
    args = ap.parse_args()
    if args.what == "demo":
        save(build_demo(), args.out)
    elif args.what == "bench":
        for name in args.only.split(","):
            start = time.perf_counter()
            save(BENCH[name](), args.out_dir / f"{name}.onnx")
            print(f"  built in {time.perf_counter() - start:.1f} s")
    else:
        model = build_large(int(args.min_bytes))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(
            model,
            str(args.out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=args.out.name + ".data",
            size_threshold=1024,
        )
        size = sum(p.stat().st_size for p in args.out.parent.glob(args.out.name + "*"))
        print(f"wrote {args.out} (+ .data, {size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
