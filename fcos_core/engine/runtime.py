"""Process-wide settings from the config: seeds, determinism, threads, cuDNN."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_runtime_settings(data: dict[str, Any]) -> None:
    """``deterministic``, ``num_threads`` and ``cudnn_benchmark`` of a resolved config.

    Deterministic mode turns on ``torch.use_deterministic_algorithms`` (and the cuBLAS
    workspace setting it needs, when CUDA has not started yet) and turns cuDNN benchmarking
    off; with a fixed seed a resumed run then ends with the weights of an uninterrupted one.
    """
    from fcos_core.engine import hugepages
    from fcos_core.logging_setup import get_logger

    hugepages.log_state(get_logger("fcos.runtime"))
    threads = data.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    deterministic = bool(data.get("deterministic", False))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = (
            bool(data.get("cudnn_benchmark", True)) and not deterministic
        )
