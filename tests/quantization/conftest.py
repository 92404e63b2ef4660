"""Quantization tests: one thread (the CI machine is shared), helpers from quant_nets.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

torch.set_num_threads(1)


@pytest.fixture
def ctx():
    from quant_nets import make_ctx

    return make_ctx()
