"""Wall-clock time of the start-up commands (`fcos --help`, `fcos plugins`, `fcos check`),
next to `python -c "import torch"` measured in the same run as the baseline.

    python benchmarks/bench_startup.py [--quick]

Target: every command under 2 s (ratio to `import torch` well below 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def timed(cmd: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one repetition instead of five")
    reps = 1 if ap.parse_args().quick else 5
    fcos = [sys.executable, "-m", "fcos_core"]
    base = timed([sys.executable, "-c", "import torch"], reps)
    print(f"{'command':<40} {'seconds':>8} {'x import torch':>15}")
    label = 'python -c "import torch" (baseline)'
    print(f"{label:<40} {base:8.3f} {1.0:15.2f}")
    for args in (
        ["--help"],
        ["plugins"],
        ["check", "configs/fcos_b0.yaml"],
        ["check", "configs/fcos_b0_demo.yaml"],
    ):
        t = timed(fcos + args, reps)
        flag = "" if t < 2.0 else "  OVER 2 s"
        print(f"{'fcos ' + ' '.join(args):<40} {t:8.3f} {t / base:15.2f}{flag}")


if __name__ == "__main__":
    main()
