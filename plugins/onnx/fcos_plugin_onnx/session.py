"""ONNX Runtime sessions with predictable threading, and batch-1 latency measurement.

Threading: ORT's intra-op pool busy-waits ("spins") between ops by default, the equivalent of
OpenMP's ``OMP_WAIT_POLICY=ACTIVE``. On a machine shared with other processes (CI, a training
run) spinning threads steal each other's cores and latency grows many times over, so the
session follows the process's wait policy: ``OMP_WAIT_POLICY=PASSIVE`` (fcos's benchmarks set
it) turns spinning off (``session.intra_op.allow_spinning = 0``). The thread count is the
``threads`` option, else ``OMP_NUM_THREADS``, else the CPU cores this process may use
(:func:`fcos_core.compile.latency.default_threads`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fcos_core.compile.latency import default_threads, measure_latency
from fcos_core.compile.latency import percentile as _percentile
from fcos_core.errors import FcosUserError

# the thread budget and the latency measurement are fcos core's, shared by every backend
__all__ = [
    "_percentile",
    "check_providers",
    "default_threads",
    "make_session",
    "measure_latency",
    "run_session",
    "spinning_allowed",
]


def spinning_allowed() -> bool:
    """False when the process asked for passive waiting (``OMP_WAIT_POLICY=PASSIVE``)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"


def check_providers(providers: Sequence[str], where: str = "compile_cfg.providers") -> list[str]:
    """The requested providers, all available in this onnxruntime build (else a user error)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = list(providers) or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in available]
    if missing:
        raise FcosUserError(
            f"{where}: execution provider(s) {missing} are not available in "
            f"this onnxruntime build (available: {available})",
            hint="install the onnxruntime package that has them (e.g. "
            "onnxruntime-gpu) or list only available providers",
        )
    return providers


def make_session(
    model: str | bytes,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimized_path: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """An ``InferenceSession`` and a description of its threading.

    Args:
        model: path of an ONNX file or its serialized bytes.
        providers: execution providers in priority order (checked to be available).
        threads: intra-op threads; None: :func:`default_threads`.
        optimized_path: write ORT's optimized graph there (to count fused kernels).
    """
    import onnxruntime as ort

    providers = check_providers(providers)
    n = int(threads) if threads else default_threads()
    if n < 1:
        raise FcosUserError(f"threads must be >= 1, got {threads}", hint="set threads: 1 or more")
    spin = spinning_allowed()
    so = ort.SessionOptions()
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # errors only: the optimizer's notes are not for users
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    sess = ort.InferenceSession(model, so, providers=providers)
    return sess, {"threads": n, "spinning": spin, "providers": sess.get_providers()}


def run_session(sess: Any, feed: Mapping[str, Any]) -> list[Any]:
    return sess.run(None, dict(feed))
