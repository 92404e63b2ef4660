"""fcos-plugin-openvino tests: one thread (the CI machine is shared); the onnx plugin's test
detectors and photo-like scenes (its helpers folder, appended to sys.path as the onnx and
tensorrt tests do)."""

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
pytest.importorskip("openvino")
torch.set_num_threads(1)
