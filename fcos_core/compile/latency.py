"""Batch-1 latency of a compiled artifact's runtime: wall time of repeated calls, warm-up
excluded, with the thread budget stated (torch-free).

The thread budget is ``OMP_NUM_THREADS`` when set, else the CPU cores this process may use;
fcos's CPU runtimes (ONNX Runtime sessions, numpy, torch) follow it unless a backend's own
option says otherwise.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the usable CPU cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default rule)."""
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def measure_latency(run: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    """Wall time of ``run()`` in milliseconds: mean, p50, p90, min, max over ``runs`` calls
    after ``warmup`` untimed ones."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(max(0, warmup)):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(times)
    return {
        "runs": runs,
        "mean_ms": statistics.fmean(times),
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
    }
