"""Fold time of long BatchNormalization chains (issue 19): Conv -> n BN beside a side branch of
``--other`` nodes (Conv/Tanh pairs), folded in-process with ``fold_model`` (no verification).

Run by hand (not in CI):  python benchmarks/chain_perf.py [--chains 100,300,500] [--other 1000]
                          [--repeat 3]
Each chain must fold whole; the time of one fold pass over the model is the cost of each extra
pass, so a chain folded one BN per pass grows quadratically, one folded in a pass linearly.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from bnfold import fold_model
from bnfold.fold.engine import FoldEngine


def build(n_bn: int, other: int, c: int = 8, seed: int = 0) -> ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="conv")]
    w0 = rng.normal(0, 0.4, (c, c, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w0, "w0")]
    prev = "t0"
    for k in range(n_bn):
        p = f"bn{k}"
        var = rng.uniform(0.1, 4, c)
        gamma = np.sqrt(var) * rng.choice([-1.0, 1.0], c)
        stats = (("scale", gamma), ("B", rng.normal(0, 1, c)), ("mean", rng.normal(0, 1, c)))
        for name, v in (*stats, ("var", var)):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{p}_{name}"))
        inputs = [prev, f"{p}_scale", f"{p}_B", f"{p}_mean", f"{p}_var"]
        nodes.append(helper.make_node("BatchNormalization", inputs, [f"{p}_y"], name=p))
        prev = f"{p}_y"
    side = "x"
    for k in range(other // 2):
        w = rng.normal(0, 0.3, (c, c, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"sw{k}"))
        nodes.append(helper.make_node("Conv", [side, f"sw{k}"], [f"s{k}"], name=f"side_conv{k}"))
        nodes.append(helper.make_node("Tanh", [f"s{k}"], [f"sr{k}"], name=f"side_act{k}"))
        side = f"sr{k}"
    nodes.append(helper.make_node("Add", [prev, side], ["y"], name="join"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 4])
    model = helper.make_model(
        helper.make_graph(nodes, "chain", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", default="100,300,500")
    parser.add_argument("--other", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| chain | nodes | folded | passes | best s | median s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(v) for v in args.chains.split(",")):
        model = build(n, args.other)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = fold_model(model)
            times.append(time.perf_counter() - start)
        engine = FoldEngine(build(n, args.other))
        engine.run()
        best, median = min(times), sorted(times)[len(times) // 2]
        print(
            f"| {n} | {len(model.graph.node)} | {result.report.folded} | {engine.passes} "
            f"| {best:.3f} | {median:.3f} |"
        )


if __name__ == "__main__":
    main()
