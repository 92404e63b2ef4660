"""``export_float_onnx``: the float deploy model as ONNX, checked against torch eager."""

from __future__ import annotations

import numpy as np
import onnx_testnets as nets
import onnxruntime as ort
import pytest
import torch

from fcos_core.errors import FcosUserError
from fcos_plugin_onnx.float_export import export_float_onnx


def test_float_export_matches_torch_at_any_batch(tmp_path):
    model = nets.randomise_bn(nets.make_fcos(seed=2, train=False, for_compile=True), 2).eval()
    path = export_float_onnx(model, {"img": (1, 3, nets.SIZE, nets.SIZE)}, tmp_path / "f.onnx")
    assert path.is_file() and not list(tmp_path.glob("*.data"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "img"
    x = nets.images(3, seed=4)  # exported at batch 2, run at 3: the batch is dynamic
    outs = sess.run(None, {"img": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert len(outs) == len(ref) == 12
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4)


def test_float_export_refuses_a_quantized_model(trained, tmp_path):
    with pytest.raises(FcosUserError, match="quantized"):
        export_float_onnx(trained["deploy"], {"img": (1, 3, 64, 64)}, tmp_path / "q.onnx")
