"""Fold-only speed and peak memory of bnfold, as whole processes, against two baselines measured in
the same run: (a) a plain protobuf parse + serialize with file read/write of the same model, and
(b) onnxruntime's offline basic-level optimisation saving the same model. Also the cost of
verification, and a model over 2 GB with external data (generated on the fly, deleted after).

Run by hand (not in CI):  python benchmarks/fold_perf.py [--models resnet50,mobilenetv2,unet,mlp]
                          [--repeat 3] [--large-gb 2.2 | --large-gb 0 to skip]
Budgets (DESIGN section 6): bnfold/(a) time <= 1.5, bnfold < (b) time, bnfold/(a) peak RSS <= 1.1,
large model peak RSS <= 1.5x its size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "models" / "generate.py"

PLAIN = """
import sys
from onnx import ModelProto
with open(sys.argv[1], "rb") as f:
    m = ModelProto.FromString(f.read())
with open(sys.argv[2], "wb") as f:
    f.write(m.SerializeToString())
"""

ORT_BASIC = """
import sys
import onnxruntime as ort
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
so.optimized_model_filepath = sys.argv[2]
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""

TWO_SESSIONS = """
import sys
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
for path in sys.argv[1:3]:
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else (1 if k == 0 else 16) for k, d in enumerate(i.shape)]
        feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    s.run(None, feeds)
"""


@dataclass
class Run:
    seconds: float
    peak_mb: float


VERIFY_SECONDS: list[float] = []


def measure(cmd: list[str]) -> Run:
    """Wall time and peak RSS (this child only, via wait4) of one whole process."""
    os.sync()  # the previous process's writes go to disk first, not during this one
    start = time.perf_counter()
    json_out = "--json" in cmd
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE if json_out else subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    out = proc.stdout.read() if json_out and proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    if json_out:  # the verification's own clock, as bnfold reports it
        doc = json.loads(out)
        if doc["command"] == "verify":
            VERIFY_SECONDS.append(doc["verification"]["seconds"])
    return Run(elapsed, usage.ru_maxrss / 1024)  # ru_maxrss is KiB on Linux


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs), statistics.median(r.peak_mb for r in runs)
    )


FASTEST: dict[str, float] = {}


def bench_model(path: Path, work: Path, repeat: int) -> dict[str, Run]:
    py = sys.executable
    VERIFY_SECONDS.clear()
    cmds = {
        "plain parse+serialize": [py, "-c", PLAIN, str(path), str(work / "plain.onnx")],
        "ort basic offline": [py, "-c", ORT_BASIC, str(path), str(work / "ort.onnx")],
        "bnfold --no-verify": [
            py,
            "-m",
            "bnfold",
            str(path),
            "-o",
            str(work / "f.onnx"),
            "--no-verify",
            "-q",
        ],
        "bnfold (verified)": [py, "-m", "bnfold", str(path), "-o", str(work / "v.onnx"), "-q"],
        "bnfold verify A B": [
            py,
            "-m",
            "bnfold",
            "verify",
            str(path),
            str(work / "f.onnx"),
            "--json",
        ],
        "two ort sessions+runs": [py, "-c", TWO_SESSIONS, str(path), str(work / "f.onnx")],
    }
    runs: dict[str, list[Run]] = {k: [] for k in cmds}
    for _ in range(repeat):  # interleaved, so drift on a shared machine hits all alike
        for name, cmd in cmds.items():
            runs[name].append(measure(cmd))
    FASTEST.clear()
    FASTEST.update({k: min(r.seconds for r in v) for k, v in runs.items()})
    return {k: median_run(v) for k, v in runs.items()}


def report(name: str, size_mb: float, r: dict[str, Run]) -> None:
    plain, ort, fold = r["plain parse+serialize"], r["ort basic offline"], r["bnfold --no-verify"]
    ver, two = r["bnfold (verified)"], r["two ort sessions+runs"]
    print(f"\n## {name} ({size_mb:.1f} MB)")
    print(f"{'process':26} {'median s':>8} {'fastest':>8} {'peak MB':>8}")
    for k, v in r.items():
        print(f"{k:26} {v.seconds:8.2f} {FASTEST[k]:8.2f} {v.peak_mb:8.0f}")
    print(f"fold time / plain           {fold.seconds / plain.seconds:6.2f}  (budget <= 1.5)")
    print(f"fold time / ort basic save  {fold.seconds / ort.seconds:6.2f}  (budget < 1.0)")
    best = FASTEST["bnfold --no-verify"]
    print(
        f"  fastest runs: fold / plain {best / FASTEST['plain parse+serialize']:.2f}, "
        f"fold / ort basic save {best / FASTEST['ort basic offline']:.2f}"
    )
    print(f"fold peak / plain peak      {fold.peak_mb / plain.peak_mb:6.2f}  (budget <= 1.1)")
    inside = statistics.median(VERIFY_SECONDS)
    print(
        f"verification: bnfold (verified) - bnfold --no-verify {ver.seconds - fold.seconds:.2f} s;"
        f" 'bnfold verify' times its check at {inside:.2f} s (fastest "
        f"{min(VERIFY_SECONDS):.2f}); a process doing two ORT sessions+runs {two.seconds:.2f} s"
    )
    print(
        f"verification / two sessions+runs  {inside / two.seconds:6.2f}  "
        f"(fastest {min(VERIFY_SECONDS) / FASTEST['two ort sessions+runs']:.2f}; budget: about 1)"
    )


def bench_large(work: Path, gigabytes: float) -> None:
    path = work / "large.onnx"
    min_bytes = int(gigabytes * 1e9)
    subprocess.run(
        [sys.executable, str(GENERATE), "large", "--out", str(path), "--min-bytes", str(min_bytes)],
        check=True,
    )
    size = sum(p.stat().st_size for p in work.glob("large.onnx*"))
    fold = measure(
        [
            sys.executable,
            "-m",
            "bnfold",
            str(path),
            "-o",
            str(work / "lf.onnx"),
            "--no-verify",
            "-q",
        ]
    )
    print(f"\n## external-data model ({size / 1e9:.2f} GB)")
    print(f"fold: {fold.seconds:.1f} s, peak {fold.peak_mb:.0f} MB")
    print(f"fold peak / model size      {fold.peak_mb * 2**20 / size:6.2f}  (budget <= 1.5)")


def machine() -> str:
    """The machine and the package versions the figures were taken with."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        ram = f"{int(mem) / 2**20:.0f} GiB RAM"
    except OSError:
        ram = "unknown RAM"
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('bnfold', 'onnx', 'onnxruntime', 'numpy', 'protobuf', 'typer')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (
        f"{platform.platform()}, {cpu}, {os.cpu_count()} cpus, {ram}\n"
        f"python {sys.version.split()[0]}; {versions}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2,unet,mlp")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--large-gb", type=float, default=2.2, help="0 skips the external-data run")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "bench")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    missing = [n for n in names if not (args.model_dir / f"{n}.onnx").exists()]
    if missing:
        subprocess.run(
            [
                sys.executable,
                str(GENERATE),
                "bench",
                "--out-dir",
                str(args.model_dir),
                "--only",
                ",".join(missing),
            ],
            check=True,
        )
    print(machine())
    print(f"repeat {args.repeat} (medians; the processes are interleaved run by run)")
    for name in names:
        path = args.model_dir / f"{name}.onnx"
        with tempfile.TemporaryDirectory(dir=args.model_dir) as tmp:
            r = bench_model(path, Path(tmp), args.repeat)
        report(name, path.stat().st_size / 2**20, r)
    if args.large_gb > 0:
        work = Path(tempfile.mkdtemp(dir=args.model_dir))
        try:
            bench_large(work, args.large_gb)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
