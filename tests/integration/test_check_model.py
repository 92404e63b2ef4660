"""`fcos check CONFIG --model`: HAT's model checker, before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SMALL = "deploy_inputs.img=[1,3,128,128]"


def _check(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fcos_core",
            "check",
            "configs/fcos_b0.yaml",
            "--model",
            SMALL,
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_seed_deploy_model_can_compile():
    out = _check()
    assert out.returncode == 0, out.stderr
    assert "every layer can compile for nash_e" in out.stdout


@pytest.mark.slow
def test_unsupported_operation_is_rejected_with_the_layer_name():
    out = _check("vars.backbone.activation=swish")  # swish (silu) has no NASH-E integer form
    assert out.returncode == 2
    assert "cannot compile for nash_e" in out.stderr
    assert "body.backbone" in out.stderr and "silu" in out.stderr.lower()
    assert "Traceback" not in out.stderr
