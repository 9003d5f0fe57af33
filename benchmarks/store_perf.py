"""Folding models with external data against onnx-ir's plain load + save, and the memory of a
model over 2 GB, as whole processes in one run (issue 13's budgets). Run by hand, not in CI:

    pip install onnx-ir      # only for this benchmark
    python benchmarks/store_perf.py [--repeat 5] [--large-gb 2.2 | --large-gb 0]

Prints medians and the ratios: fold / onnx-ir time and peak RSS on the ~100 MB ResNet-50 saved
with external data (budget <= 1 each), the large model's fold peak / its size (budget <= 0.25)
and inspect's peak / fold's peak (budget < 1, or equal within noise).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "models" / "generate.py"

ONNX_IR = """
import sys
import onnx_ir as ir
model = ir.load(sys.argv[1])
ir.save(model, sys.argv[2], external_data=sys.argv[3])
"""

TO_EXTERNAL = """
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save_model(m, sys.argv[2], save_as_external_data=True, location=sys.argv[3],
                size_threshold=1024)
"""


def measure(args: list[str]) -> tuple[float, float]:
    """A fresh process each time: ru_maxrss of children is a running maximum, so each
    measurement runs in its own wrapper to read its own peak."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "s = time.perf_counter() - t\n"
        "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True)
    seconds, peak, code = out.stdout.split()
    if int(code) not in (0, 4):
        raise SystemExit(f"{args} exited {code}")
    return float(seconds), float(peak)


def bnfold(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnfold", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--large-gb", type=float, default=2.2)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bnfold-store-perf-"))
    try:
        src = work / "resnet50.onnx"
        subprocess.run(
            [sys.executable, str(GENERATE), "bench", "--out-dir", str(work), "--only", "resnet50"],
            check=True,
            capture_output=True,
        )
        ext = work / "ext" / "resnet50.onnx"
        ext.parent.mkdir()
        subprocess.run(
            [sys.executable, "-c", TO_EXTERNAL, str(src), str(ext), "resnet50.onnx.data"],
            check=True,
        )
        size = sum(p.stat().st_size for p in ext.parent.iterdir()) / 2**20
        times: dict[str, list[float]] = {"onnx-ir": [], "fold": [], "inspect": []}
        peaks: dict[str, list[float]] = {k: [] for k in times}
        for _ in range(opts.repeat):  # interleaved, so machine noise hits all alike
            for key, args in (
                (
                    "onnx-ir",
                    [
                        sys.executable,
                        "-c",
                        ONNX_IR,
                        str(ext),
                        str(work / "ir.onnx"),
                        "ir.onnx.data",
                    ],
                ),
                ("fold", bnfold(str(ext), "-o", str(work / "f.onnx"), "--no-verify", "-q")),
                ("inspect", bnfold("inspect", str(ext), "-q")),
            ):
                subprocess.run(["sync"])
                seconds, peak = measure(args)
                times[key].append(seconds)
                peaks[key].append(peak)
        med = {k: statistics.median(v) for k, v in times.items()}
        mp = {k: statistics.median(v) for k, v in peaks.items()}
        print(f"## ResNet-50 with external data ({size:.1f} MB), {opts.repeat} runs, medians")
        print(f"{'process':24} {'median s':>9} {'fastest':>8} {'peak MB':>8}")
        for k in times:
            print(f"{k:24} {med[k]:9.2f} {min(times[k]):8.2f} {mp[k]:8.0f}")
        print(f"fold time / onnx-ir load+save   {med['fold'] / med['onnx-ir']:.2f}  (budget <= 1)")
        print(f"fold peak / onnx-ir peak        {mp['fold'] / mp['onnx-ir']:.2f}  (budget <= 1)")
        if opts.large_gb > 0:
            large = work / "large" / "large.onnx"
            large.parent.mkdir()
            subprocess.run(
                [
                    sys.executable,
                    str(GENERATE),
                    "large",
                    "--out",
                    str(large),
                    "--min-bytes",
                    str(opts.large_gb * 1e9),
                ],
                check=True,
                capture_output=True,
            )
            lsize = sum(p.stat().st_size for p in large.parent.iterdir()) / 2**20
            subprocess.run(["sync"])
            f_s, f_peak = measure(
                bnfold(str(large), "-o", str(work / "lf.onnx"), "--no-verify", "-q")
            )
            i_s, i_peak = measure(bnfold("inspect", str(large), "-q"))
            print(f"## a model of {lsize:.0f} MB with external data")
            print(
                f"fold {f_s:.1f} s, peak {f_peak:.0f} MB = {f_peak / lsize:.3f}x its size "
                "(budget <= 0.25)"
            )
            print(f"inspect {i_s:.1f} s, peak {i_peak:.0f} MB = {i_peak / f_peak:.3f}x the fold's")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
