"""fcos-plugin-tensorrt tests: one thread; the onnx plugin's test detectors (its helpers folder,
appended to sys.path like the onnx tests do)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

HELPERS = str(Path(__file__).resolve().parents[2] / "onnx" / "tests" / "helpers")
if HELPERS not in sys.path:
    sys.path.append(HELPERS)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
