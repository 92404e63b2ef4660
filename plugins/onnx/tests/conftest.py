"""fcos-plugin-onnx tests: one thread (the CI machine is shared), helpers in
helpers/onnx_testnets.py, and one trained-and-quantized detector shared by the tests that need
real detections."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# the helpers live in a folder without a conftest.py, appended (not prepended) to sys.path, so
# that `import conftest` in other test folders never finds this file
HELPERS = str(Path(__file__).parent / "helpers")
if HELPERS not in sys.path:
    sys.path.append(HELPERS)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained():
    """A small FCOS trained on 8 synthetic images, in two quantized forms built with the
    public converters: ``eval_model`` (dequantized outputs, decodes detections) and
    ``deploy`` (for_compile post-process, integer outputs), plus the float model and data."""
    import onnx_testnets as nets

    batch = nets.synthetic_batch(8, seed=0)
    float_model = nets.train(nets.make_fcos(seed=0), batch, steps=150)
    calib = [batch["img"][:4], batch["img"][4:], nets.images(4, seed=7)]
    eval_model = nets.quantize(float_model, calib)
    deploy_float = nets.make_fcos(train=False, for_compile=True, dequant_output=False)
    deploy_float.body.load_state_dict(float_model.body.state_dict())
    deploy = nets.quantize(deploy_float.eval(), calib)
    return {
        "batch": batch,
        "float": float_model,
        "eval_model": eval_model,
        "deploy": deploy,
        "calib": calib,
    }
