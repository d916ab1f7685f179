"""Benchmark: the smoke suite end to end, and a no-op rerun of the finished suite (whole processes).

Run: python tests/perf/bench_smoke.py [--repeats 5]. Goals on 2 CPUs: smoke < 3 min, no-op < 2 s.
The no-op figure is also given as a fraction of the full run measured in the same invocation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cxrbench", *args],
        check=True,
        cwd=REPO,
        env={**os.environ, "CXRBENCH_QUIET": "1"},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="no-op reruns to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = ["run", "--suite", "smoke", "--run", str(Path(tmp) / "run")]
        full = timed(run)
        noop = [timed(run) for _ in range(args.repeats)]
    median = statistics.median(noop)
    print(f"smoke suite, full run:      {full:7.1f} s   (goal < 180 s)")
    print(
        f"smoke suite, no-op rerun:   {median:7.2f} s   median of {args.repeats} "
        f"[min {min(noop):.2f}, max {max(noop):.2f}]   (goal < 2 s)"
    )
    print(f"no-op / full:               {median / full:7.4f}")


if __name__ == "__main__":
    main()
