"""Build bnfold's demo model and its benchmark models with onnx.helper and numpy only.

    python models/generate.py demo  [--out models/demo.onnx]
    python models/generate.py bench [--out-dir models/bench] [--only resnet50,mobilenetv2,unet,mlp]
    python models/generate.py large --out PATH --min-bytes N     (external data, may exceed 2 GiB)

Every model is deterministic (fixed seeds: byte-identical files on every run), IR version 8 (set
explicitly: onnx 1.23's make_model stamps an IR that onnxruntime refuses), opset 17, float32, with
a dynamic batch dimension "N" and a unique name on every node.

BatchNormalization statistics look trained, not fresh: per BN, variances 10**U(-6, 1) with two
channels pinned near 1e-6 and one at exactly 0.0 (epsilon 1e-5 keeps it finite), gammas signed in
[-2, 2] with ~15% negative and one at 1e-4, non-zero normal means, normal betas. As in a trained
net the statistics match the activations: the He-initialised weights (and bias) of a BN's producer
are scaled per output channel by sqrt(var), so the folded scale gamma / sqrt(var + eps) reaches
~600 on some channels while activations stay O(1) through deep nets. A BN with no linear producer
(after a Relu or another BN) has its gain capped at 1 instead.

The demo (input "image" [N, 3, 32, 32]; outputs "logits" [N, 10] and "features" [N, 16, 32, 32])
holds 11 BNs that fold, one per pattern bnfold supports:
  Conv (no bias) -> BN, Conv (bias) -> BN followed by a Caffe-style Mul/Add scale pair (which folds
  too), depthwise Conv -> BN, Conv -> Add([C,1,1] const) -> BN, Conv -> Identity -> BN, a BN after
  a Relu into the unpadded 1x1 Conv after it, Conv -> BN -> BN (the second folds after the first),
  grouped ConvTranspose (group=2) -> BN, Gemm -> BN and MatMul (constant [K, M]) -> BN on a 2-D
  tensor;
and 4 BNs that must not fold, each for a different reason:
  after a Relu and before a padded 3x3 Conv (padded_conv), after a Conv whose output a residual Add
  also reads (shared output), with a scale initializer that is also a graph input and so can be
  overridden at run time (non-constant parameter), after a Conv whose output is also the graph
  output "features".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
EPS = 1e-5

Stats = dict[str, np.ndarray]


def fvi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    """A float32 tensor value info."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class Builder:
    """Accumulates nodes and initializers with unique names, drawing from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        # nodes and initializers go straight into the model's graph: helper.make_graph and
        # make_model would each copy every weight (3 copies in memory for build_large)
        self.proto = onnx.ModelProto()
        self.graph = self.proto.graph
        self.count = 0
        self.overridable: list[str] = []  # initializers also listed as graph inputs

    def name(self, base: str) -> str:
        """A fresh name, unique across nodes, values and initializers."""
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        """Add a float32 initializer and return its name."""
        name = self.name(base)
        self.add_tensor(np.ascontiguousarray(array, dtype=np.float32), name)
        return name

    def add_tensor(self, array: np.ndarray, name: str) -> None:
        """Append ``array`` as an initializer (one transient copy of this tensor only)."""
        self.graph.initializer.append(numpy_helper.from_array(array, name))

    def node(
        self,
        op: str,
        inputs: list[str],
        base: str | None = None,
        out: str | None = None,
        **attrs: Any,
    ) -> str:
        """Add a single-output node; its output is ``out`` or the node's own unique name."""
        name = self.name(base or op.lower())
        output = out or name
        self.graph.node.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    # -- BatchNormalization ---------------------------------------------------------------------

    def stats(self, c: int, gain: float = 1.0) -> Stats:
        """Trained-looking BN statistics for ``c`` channels (see the module docstring)."""
        rng = self.rng
        var = 10.0 ** rng.uniform(-6, 1, c)
        gamma = rng.uniform(0.1, 2.0, c) * np.where(rng.random(c) < 0.15, -1.0, 1.0)
        if c >= 8:
            pinned = rng.choice(c, 4, replace=False)
            var[pinned[:2]] = 1e-6 * rng.uniform(0.9, 1.1, 2)
            var[pinned[2]] = 0.0
            gamma[pinned[3]] = 1e-4
        mean = rng.normal(0.0, 1.0, c) * np.sqrt(var + EPS)
        beta = rng.normal(0.0, 0.5, c)
        return {"scale": gamma * gain, "B": beta, "mean": mean, "var": var}

    def capped_stats(self, c: int) -> Stats:
        """Statistics for a BN whose input is not scaled to match: per-channel gain at most 1."""
        s = self.stats(c)
        s["scale"] = s["scale"] * np.minimum(1.0, np.sqrt(s["var"] + EPS))
        return s

    @staticmethod
    def std(s: Stats) -> np.ndarray:
        """Per-channel factor that makes a He-initialised producer's output match ``s``."""
        return np.sqrt(np.maximum(s["var"], 1e-9))

    def bn(self, x: str, s: Stats, *, scale_input: bool = False, out: str | None = None) -> str:
        """BatchNormalization (inference mode) of ``x`` with statistics ``s``."""
        names = [self.const(f"bn_{k}", s[k]) for k in ("scale", "B", "mean", "var")]
        if scale_input:
            self.overridable.append(names[0])
        return self.node("BatchNormalization", [x, *names], "bn", out=out, epsilon=EPS)

    # -- linear producers -----------------------------------------------------------------------

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
        chan_scale: np.ndarray | None = None,
        out: str | None = None,
    ) -> str:
        """He-initialised 2-D Conv, output channels optionally scaled by ``chan_scale``."""
        fan_in = cin // group * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
        cs = np.ones(cout) if chan_scale is None else chan_scale
        inputs = [x, self.const("w", w * cs[:, None, None, None])]
        if bias:
            inputs.append(self.const("b", self.rng.normal(0.0, 0.5, cout) * cs))
        p = k // 2
        return self.node(
            "Conv",
            inputs,
            "conv",
            out=out,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            group=group,
        )

    def conv_bn(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        gain: float = 1.0,
    ) -> str:
        """Conv -> BN with statistics matching the conv's output."""
        s = self.stats(cout, gain)
        y = self.conv(
            x, cin, cout, k, stride=stride, group=group, bias=bias, chan_scale=self.std(s)
        )
        return self.bn(y, s)

    def cbr(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        """Conv -> BN -> Relu."""
        return self.node("Relu", [self.conv_bn(x, cin, cout, k, stride=stride, group=group)])

    def deconv_bn(self, x: str, cin: int, cout: int, group: int) -> str:
        """ConvTranspose (2x2, stride 2, ``group``) -> BN with matching statistics."""
        s = self.stats(cout)
        fan_in = cin // group * 4
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (group, cin // group, cout // group, 2, 2))
        w *= self.std(s).reshape(group, 1, cout // group, 1, 1)  # out channel g*(cout/g) + j
        wname = self.const("wt", w.reshape(cin, cout // group, 2, 2))
        y = self.node("ConvTranspose", [x, wname], "deconv", strides=[2, 2], group=group)
        return self.bn(y, s)

    def dense(self, k: int, n: int, chan_scale: np.ndarray | None = None) -> np.ndarray:
        """He-initialised [K, N] weight, columns optionally scaled by ``chan_scale``."""
        w = self.rng.normal(0.0, np.sqrt(2.0 / k), (k, n))
        return w if chan_scale is None else w * chan_scale

    # -- model ------------------------------------------------------------------------------------

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        """Finish the model: graph name, inputs and outputs, IR 8, opset 17."""
        self.graph.name = name
        self.graph.input.extend(inputs)
        for init in self.graph.initializer:
            if init.name in self.overridable:
                self.graph.input.append(
                    helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                )
        self.graph.output.extend(outputs)
        self.proto.ir_version = IR_VERSION
        self.proto.opset_import.append(helper.make_opsetid("", OPSET))
        self.proto.producer_name = "bnfold models/generate.py"
        return self.proto


# -- demo -----------------------------------------------------------------------------------------


def build_demo() -> onnx.ModelProto:
    """Small model with 11 foldable and 4 unfoldable BNs (see the module docstring)."""
    b = Builder(2024)
    # foldable: Conv (no bias) -> BN
    x = b.cbr("image", 3, 16, 3)
    # foldable: Conv (bias) -> BN, then a Caffe-style Scale pair Mul([C,1,1]) -> Add([C,1,1])
    y = b.conv_bn(x, 16, 16, 3, bias=True)
    y = b.node("Mul", [y, b.const("scale_gamma", b.rng.uniform(0.5, 1.5, (16, 1, 1)))])
    y = b.node("Add", [y, b.const("scale_beta", b.rng.normal(0.0, 0.1, (16, 1, 1)))])
    x = b.node("Relu", [y])
    # foldable: depthwise Conv -> BN
    x = b.cbr(x, 16, 16, 3, group=16)
    # foldable: Conv -> Add(per-channel [C, 1, 1] constant) -> BN
    s = b.stats(24)
    y = b.conv(x, 16, 24, 1, chan_scale=b.std(s))
    chan_bias = b.rng.normal(0.0, 0.5, (24, 1, 1)) * b.std(s)[:, None, None]
    x = b.node("Relu", [b.bn(b.node("Add", [y, b.const("chan_bias", chan_bias)]), s)])
    # foldable: Conv -> Identity -> BN
    s = b.stats(24)
    y = b.node("Identity", [b.conv(x, 24, 24, 3, stride=2, chan_scale=b.std(s))])
    x = b.node("Relu", [b.bn(y, s)])
    # foldable into the layer after it: BN after a Relu, then an unpadded 1x1 Conv
    x = b.node("Relu", [b.conv(b.bn(x, b.capped_stats(24)), 24, 24, 1)])
    # foldable: Conv -> BN -> BN (the second BN folds once the first has)
    x = b.node("Relu", [b.bn(b.conv_bn(x, 24, 32, 3), b.capped_stats(32))])
    # unfoldable (padded_conv): BN after a Relu, before a padded 3x3 Conv
    x = b.bn(x, b.capped_stats(32))
    # unfoldable (shared output): the residual Add also reads the conv output
    s = b.stats(32, gain=0.5)
    shared = b.conv(x, 32, 32, 3, chan_scale=b.std(s) * 0.5)
    x = b.node("Relu", [b.node("Add", [b.bn(shared, s), shared])])
    # unfoldable (non-constant parameter): the BN scale is also a graph input
    s = b.stats(32)
    y = b.conv(x, 32, 32, 1, chan_scale=b.std(s))
    x = b.node("Relu", [b.bn(y, s, scale_input=True)])
    # foldable: grouped ConvTranspose (group=2) -> BN, upsampling 16x16 -> 32x32
    x = b.node("Relu", [b.deconv_bn(x, 32, 16, group=2)])
    # unfoldable (graph output): the conv output is also the graph output "features"
    s = b.stats(16)
    feat = b.conv(x, 16, 16, 3, chan_scale=b.std(s), out="features")
    x = b.node("Relu", [b.bn(feat, s)])
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    # foldable: Gemm (transB=1, with C) -> BN on [N, 32]
    s = b.stats(32)
    w1 = b.dense(16, 32, b.std(s)).T
    c1 = b.rng.normal(0.0, 0.5, 32) * b.std(s)
    g = b.node("Gemm", [pooled, b.const("fc1_w", w1), b.const("fc1_b", c1)], "gemm", transB=1)
    h = b.node("Relu", [b.bn(g, s)])
    # foldable: MatMul (constant [K, M] weight) -> BN on [N, 10]
    s = b.stats(10)
    mm = b.node("MatMul", [h, b.const("fc2_w", b.dense(32, 10, b.std(s)))], "matmul")
    b.bn(mm, s, out="logits")
    return b.model(
        "bnfold_demo",
        [fvi("image", ["N", 3, 32, 32])],
        [fvi("logits", ["N", 10]), fvi("features", ["N", 16, 32, 32])],
    )


# -- benchmark models -----------------------------------------------------------------------------


def classifier(b: Builder, x: str, c: int, classes: int = 1000) -> None:
    """GlobalAveragePool -> Flatten -> Gemm(transB=1) to the graph output "logits"."""
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    w = b.rng.normal(0.0, np.sqrt(1.0 / c), (classes, c))
    bias = b.const("fc_b", np.zeros(classes))
    b.node("Gemm", [pooled, b.const("fc_w", w), bias], "fc", out="logits", transB=1)


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
            y = b.conv_bn(y, width, cout, 1, gain=0.3)  # damped residual branch
            short = b.conv_bn(x, cin, cout, 1, stride=stride) if i == 0 else x
            x = b.node("Relu", [b.node("Add", [y, short])])
            cin = cout
    classifier(b, x, cin)
    return b.model("resnet50", [fvi("input", ["N", 3, 224, 224])], [fvi("logits", ["N", 1000])])


def build_mobilenetv2() -> onnx.ModelProto:
    """MobileNetV2-like: inverted residuals with depthwise convs and Relu6 (Clip)."""
    b = Builder(2)
    lo = b.const("relu6_min", np.array(0.0))
    hi = b.const("relu6_max", np.array(6.0))

    def cbr6(x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        y = b.conv_bn(x, cin, cout, k, stride=stride, group=group)
        return b.node("Clip", [y, lo, hi], "relu6")

    x = cbr6("input", 3, 32, 3, 2)
    cin = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2)]
    settings += [(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = cbr6(x, cin, hidden, 1) if t != 1 else x
            y = cbr6(y, hidden, hidden, 3, stride, group=hidden)
            y = b.conv_bn(y, hidden, c, 1, gain=0.3)
            x = b.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = cbr6(x, cin, 1280, 1)
    classifier(b, x, 1280)
    return b.model("mobilenetv2", [fvi("input", ["N", 3, 224, 224])], [fvi("logits", ["N", 1000])])


def build_unet() -> onnx.ModelProto:
    """UNet-like: Conv->BN->Relu encoder, ConvTranspose(stride 2)->BN decoder, skip Concats."""
    b = Builder(3)
    widths = [32, 64, 128, 256]
    skips: list[tuple[str, int]] = []
    x, cin = "input", 3
    for w in widths:
        x = b.cbr(b.cbr(x, cin, w, 3), w, w, 3)
        skips.append((x, w))
        x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        cin = w
    x = b.cbr(b.cbr(x, cin, 512, 3), 512, 512, 3)
    cin = 512
    for level, (skip, w) in enumerate(reversed(skips)):
        up = b.node("Relu", [b.deconv_bn(x, cin, w, group=2 if level % 2 == 0 else 1)])
        x = b.node("Concat", [up, skip], axis=1)
        x = b.cbr(b.cbr(x, 2 * w, w, 3), w, w, 3)
        cin = w
    b.conv(x, cin, 2, 1, bias=True, out="mask")
    return b.model("unet", [fvi("input", ["N", 3, 128, 128])], [fvi("mask", ["N", 2, 128, 128])])


def build_mlp() -> onnx.ModelProto:
    """MLP: Gemm(transB)->BN, Gemm(C)->BN, MatMul->BN, MatMul->Add->BN, final Gemm."""
    b = Builder(4)
    s = b.stats(1024)
    w = b.dense(512, 1024, b.std(s)).T
    x = b.node("Gemm", ["input", b.const("w", w)], "gemm", transB=1)
    x = b.node("Relu", [b.bn(x, s)])
    s = b.stats(1024)
    c = b.rng.normal(0.0, 0.5, 1024) * b.std(s)
    x = b.node("Gemm", [x, b.const("w", b.dense(1024, 1024, b.std(s))), b.const("c", c)], "gemm")
    x = b.node("Relu", [b.bn(x, s)])
    s = b.stats(512)
    x = b.node("MatMul", [x, b.const("w", b.dense(1024, 512, b.std(s)))])
    x = b.node("Relu", [b.bn(x, s)])
    s = b.stats(512)
    x = b.node("MatMul", [x, b.const("w", b.dense(512, 512, b.std(s)))])
    x = b.node("Add", [x, b.const("b", b.rng.normal(0.0, 0.5, 512) * b.std(s))])
    x = b.node("Relu", [b.bn(x, s)])
    c = b.const("c", np.zeros(10))
    b.node("Gemm", [x, b.const("w", b.dense(512, 10)), c], "gemm", out="logits")
    return b.model("mlp", [fvi("input", ["N", 512])], [fvi("logits", ["N", 10])])


def build_large(min_bytes: int) -> onnx.ModelProto:
    """A deep stack of wide 3x3 Conv->BN->Relu blocks whose weights total >= ``min_bytes``.

    Each 1024x1024x3x3 weight (~37.7 MB) is drawn in float32 and copied once into its
    TensorProto, so memory stays at about one copy of the weights. Save it with external data.
    """
    b = Builder(5)
    c = 1024
    per_block = c * c * 9 * 4
    x = b.cbr("input", 3, c, 1)
    for _ in range(max(1, -(-min_bytes // per_block))):
        s = b.stats(c)
        w = b.rng.standard_normal((c, c, 3, 3), dtype=np.float32)
        w *= (np.sqrt(2.0 / (c * 9)) * b.std(s)).astype(np.float32)[:, None, None, None]
        name = b.name("w")
        b.add_tensor(w, name)
        del w
        conv = b.node("Conv", [x, name], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.node("Relu", [b.bn(conv, s)])
    b.node("Identity", [x], out="output")
    return b.model("large", [fvi("input", ["N", 3, 8, 8])], [fvi("output", ["N", c, 8, 8])])


BENCH = {
    "resnet50": build_resnet50,
    "mobilenetv2": build_mobilenetv2,
    "unet": build_unet,
    "mlp": build_mlp,
}


def report(path: Path, seconds: float | None = None) -> None:
    """Print one line for a written file: path, size and (optionally) build time."""
    size = path.stat().st_size
    took = "" if seconds is None else f" in {seconds:.2f} s"
    print(f"wrote {path} ({size} bytes, {size / 1e6:.1f} MB){took}")


def save(model: onnx.ModelProto, path: Path, start: float | None = None) -> None:
    """Save ``model`` as one file and report it (with the time since ``start``, if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    report(path, None if start is None else time.perf_counter() - start)


def save_large(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model`` with all tensors over 1 KiB in ``<path name>.data`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    report(path)
    report(data)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    here = Path(__file__).parent
    ap = argparse.ArgumentParser(description="Build bnfold's demo and benchmark models.")
    sub = ap.add_subparsers(dest="what", required=True)
    demo = sub.add_parser("demo", help="the demo model")
    demo.add_argument("--out", type=Path, default=here / "demo.onnx")
    bench = sub.add_parser("bench", help="benchmark models")
    bench.add_argument("--out-dir", type=Path, default=here / "bench")
    bench.add_argument("--only", default=",".join(BENCH), help="comma-separated subset")
    large = sub.add_parser("large", help="a big model saved with external data")
    large.add_argument("--out", type=Path, required=True)
    large.add_argument("--min-bytes", type=float, required=True, help="e.g. 2.2e9")
    args = ap.parse_args(argv)
    if args.what == "demo":
        save(build_demo(), args.out)
    elif args.what == "bench":
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(BENCH))
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BENCH)}")
        for name in names:
            start = time.perf_counter()
            save(BENCH[name](), args.out_dir / f"{name}.onnx", start)
    else:
        save_large(build_large(int(args.min_bytes)), args.out)


if __name__ == "__main__":
    main()
