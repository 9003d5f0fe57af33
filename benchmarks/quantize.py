"""bnfold as the step before int8: onnxruntime's static QDQ quantization with and without it.

For each generated float32 model (BatchNormalization after a Concat, after Linear -> Transpose,
before Flatten -> Gemm, on the raw input, and a plain CNN), two pipelines:

  A  onnxruntime's recommended pre-processing (``quant_pre_process``), then ``quantize_static``
  B  ``bnfold`` first (verified), then the same pre-processing and ``quantize_static``

both QDQ, per channel, uint8 activations and int8 weights, calibrated (MinMax) on the same
seeded inputs. Reported per model: the float BatchNormalization nodes left in the int8 model,
its QuantizeLinear / DequantizeLinear counts, the int8 model's latency in onnxruntime
(ORT_ENABLE_ALL, one thread, batch as given; A and B interleaved in one run, medians) and its
error against the float model on other seeded inputs (worst cosine similarity of one sample's
output, and the largest absolute error over the float output's range).

Run by hand (not in CI; about a minute):  python benchmarks/quantize.py [--runs 100] [--rounds 11]

Needs, besides bnfold: onnxruntime.quantization, which ships inside the onnxruntime wheel, and
sympy, which its quant_pre_process imports for symbolic shape inference (``pip install sympy``).
Neither is a dependency of bnfold itself.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

import bnfold

CALIBRATION, TEST = 32, 32  # samples


class Net:
    """A float32 model being built: nodes and initializers with unique names, one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        pads = [k // 2] * 4
        return self.op("Conv", [x, self.const("w", w)], pads=pads, strides=[stride] * 2)

    def bn(self, x: str, c: int) -> str:
        """A BN with signed gammas; its mean and var are set from data later (``calibrate``)."""
        gamma = self.rng.uniform(0.5, 1.5, c) * np.where(self.rng.random(c) < 0.15, -1, 1)
        params = [gamma, self.rng.normal(0, 0.2, c), np.zeros(c), np.ones(c)]
        names = [
            self.const(p, v) for p, v in zip(("gamma", "beta", "mean", "var"), params, strict=True)
        ]
        return self.op("BatchNormalization", [x, *names], epsilon=1e-5)

    def linear(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / cin), (cin, cout))
        y = self.op("MatMul", [x, self.const("w", w)])
        return self.op("Add", [y, self.const("b", self.rng.normal(0, 0.1, cout))])

    def model(self, x: str, shape: list[int], y: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def concat_bn() -> onnx.ModelProto:
    """YOLO's BottleneckCSP: bn(cat(cv3(m(cv1(x))), cv2(x))), three blocks."""
    n, x, c = Net(1), "x", 32
    for _ in range(3):
        a = n.op("Relu", [n.bn(n.conv(x, c, c // 2, 1), c // 2)])
        a = n.op("Relu", [n.bn(n.conv(a, c // 2, c // 2), c // 2)])
        a = n.conv(a, c // 2, c // 2, 1)  # cv3: a plain Conv, no BN of its own
        b = n.conv(x, c, c // 2, 1)  # cv2
        cat = n.op("Concat", [a, b], axis=1)
        y = n.op("LeakyRelu", [n.bn(cat, c)], alpha=0.1)
        x = n.op("Relu", [n.bn(n.conv(y, c, c, 1), c)])
    return n.model("x", [1, c, 40, 40], x)


def linear_transpose() -> onnx.ModelProto:
    """Point-cloud style: Linear on [N, L, C], Transpose to [N, C, L], BatchNorm1d, three times."""
    n, x, c = Net(2), "x", 64
    for _ in range(3):
        t = n.op("Transpose", [n.linear(x, c, c)], perm=[0, 2, 1])
        t = n.op("Relu", [n.bn(t, c)])
        x = n.op("Transpose", [t], perm=[0, 2, 1])
    return n.model("x", [1, 256, c], x)


def flatten_gemm() -> onnx.ModelProto:
    """A small CNN whose last BN comes after a Relu, before Flatten -> Gemm (LeNet-like head)."""
    n, x = Net(3), "x"
    for cin, cout in ((3, 32), (32, 64)):
        x = n.op(
            "MaxPool",
            [n.op("Relu", [n.bn(n.conv(x, cin, cout), cout)])],
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
    x = n.bn(n.op("Relu", [n.conv(x, 64, 32)]), 32)
    f = n.op("Flatten", [x], axis=1)
    w1 = n.rng.normal(0, np.sqrt(2.0 / (32 * 64)), (32 * 64, 128))
    h = n.op("Relu", [n.op("Gemm", [f, n.const("w", w1), n.const("b", np.zeros(128))])])
    w2 = n.rng.normal(0, np.sqrt(1.0 / 128), (128, 10))
    return n.model(
        "x", [1, 3, 32, 32], n.op("Gemm", [h, n.const("w", w2), n.const("b", np.zeros(10))])
    )


def input_bn_mlp() -> onnx.ModelProto:
    """Raw tabular features (each with its own mean and spread) normalized by a BN, then an MLP."""
    n = Net(4)
    x = n.bn("x", 64)
    for cin, cout in ((64, 256), (256, 256)):
        x = n.op("Relu", [n.linear(x, cin, cout)])
    return n.model("x", [16, 64], n.linear(x, 256, 10))


def plain_cnn() -> onnx.ModelProto:
    """Conv -> BN -> Relu blocks, global pooling, a Gemm: what every tool folds already."""
    n, x = Net(5), "x"
    for cin, cout, stride in ((3, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2)):
        x = n.op("Relu", [n.bn(n.conv(x, cin, cout, 3, stride), cout)])
    f = n.op("Flatten", [n.op("GlobalAveragePool", [x])], axis=1)
    w = n.rng.normal(0, np.sqrt(1.0 / 128), (128, 10))
    return n.model(
        "x", [1, 3, 64, 64], n.op("Gemm", [f, n.const("w", w), n.const("b", np.zeros(10))])
    )


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "BN after Concat (CSP)": concat_bn,
    "Linear -> Transpose -> BN": linear_transpose,
    "BN -> Flatten -> Gemm": flatten_gemm,
    "BN on the raw input (MLP)": input_bn_mlp,
    "plain CNN (Conv -> BN)": plain_cnn,
}


def inputs(model: onnx.ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded samples; tabular features get a mean and spread of their own per column."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    if len(shape) == 2:  # raw features: what an input BatchNormalization is there for
        column = np.random.default_rng(99)
        mean, spread = column.normal(0, 3, shape[1]), 10.0 ** column.uniform(-0.5, 0.5, shape[1])
        return [
            {"x": (mean + spread * rng.standard_normal(shape)).astype(np.float32)}
            for _ in range(count)
        ]
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def session(
    model: onnx.ModelProto | str, level: ort.GraphOptimizationLevel
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def calibrate(model: onnx.ModelProto, data: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Give each BN the running mean and variance of what reaches it (as training would)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(
            helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)
        )
        run = session(probe, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        seen = np.concatenate([run.run([node.input[0]], feeds)[0] for feeds in data])
        axes = tuple(i for i in range(seen.ndim) if i != 1)
        for name, value in ((node.input[3], seen.mean(axes)), (node.input[4], seen.var(axes))):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, data: list[dict[str, np.ndarray]]) -> None:
        self.data: Iterator[dict[str, np.ndarray]] = iter(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.data, None)


def quantize(src: Path, dst: Path, data: list[dict[str, np.ndarray]]) -> None:
    prepared = dst.with_suffix(".prep.onnx")
    quant_pre_process(str(src), str(prepared))
    quantize_static(
        str(prepared), str(dst), Reader(data), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip


def count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def errors(float_out: list[np.ndarray], int8_out: list[np.ndarray]) -> tuple[float, float]:
    """(worst cosine similarity of one sample, max abs error / the float output's range)."""
    cosines, worst = [], 0.0
    span = max(float(np.ptp(np.concatenate([f.ravel() for f in float_out]))), 1e-12)
    for f, q in zip(float_out, int8_out, strict=True):
        for fs, qs in zip(f.reshape(f.shape[0], -1), q.reshape(q.shape[0], -1), strict=True):
            cosines.append(float(fs @ qs / (np.linalg.norm(fs) * np.linalg.norm(qs) + 1e-30)))
        worst = max(worst, float(np.abs(f - q).max()) / span)
    return min(cosines), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="inferences per timing round")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved A/B rounds")
    args = ap.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, Python {platform.python_version()}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, bnfold {bnfold.__version__}; "
        f"{args.rounds} rounds x {args.runs} runs, 1 thread"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in MODELS.items():
            model = build()
            calib, test = inputs(model, CALIBRATION, 0), inputs(model, TEST, 1)
            model = calibrate(model, calib)
            src, folded = Path(tmp) / "float.onnx", Path(tmp) / "folded.onnx"
            onnx.save(model, src)
            bnfold.fold_file(src, folded)
            quantize(src, Path(tmp) / "a.onnx", calib)
            quantize(folded, Path(tmp) / "b.onnx", calib)
            reference = session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            float_out = [reference.run(None, feeds)[0] for feeds in test]
            row = [label, str(count(model, "BatchNormalization"))]
            sessions, ms = {}, {}
            for key in ("a", "b"):
                q = onnx.load(Path(tmp) / f"{key}.onnx")
                sessions[key] = session(
                    str(Path(tmp) / f"{key}.onnx"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                )
                cos, err = errors(float_out, [sessions[key].run(None, feeds)[0] for feeds in test])
                row += [
                    str(count(q, "BatchNormalization")),
                    f"{count(q, 'QuantizeLinear')}/{count(q, 'DequantizeLinear')}",
                ]
                ms[key] = []
                row += [f"{cos:.4f}", f"{err:.4f}"]
            feeds = test[0]
            for key in ("a", "b"):
                for _ in range(20):
                    sessions[key].run(None, feeds)  # warm-up
            for _ in range(args.rounds):
                for key in ("a", "b"):
                    start = time.perf_counter()
                    for _ in range(args.runs):
                        sessions[key].run(None, feeds)
                    ms[key].append((time.perf_counter() - start) / args.runs * 1e3)
            a, b = statistics.median(ms["a"]), statistics.median(ms["b"])
            row += [f"{a:.3f}", f"{b:.3f}", f"{b / a:.2f}"]
            rows.append(row)
            print(f"# {label}: done", file=sys.stderr)
    head = [
        "model", "float BN", "A: BN left", "A: Q/DQ", "A: worst cos", "A: max err", "B: BN left",
        "B: Q/DQ", "B: worst cos", "B: max err", "A ms", "B ms", "B/A",
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
