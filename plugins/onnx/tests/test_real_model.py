"""The seed's deploy model (EfficientNet-B0 relu/no-SE + BiFPN + FCOSHead, from the first-party
plugins) at 128x128: check, quantize with the public converters, compile, compare codes."""

from __future__ import annotations

from pathlib import Path

import onnx_testnets as nets
import pytest
import torch

pytest.importorskip("fcos_plugin_efficientnet")
pytest.importorskip("fcos_plugin_bifpn")

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "fcos_b0_demo.yaml"
S = 128


@pytest.mark.slow
@pytest.mark.skipif(not CONFIG.is_file(), reason="needs the repository's demo config")
def test_b0_bifpn_deploy_model_exports_and_agrees(tmp_path):
    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.plugins import load_host
    from fcos_plugin_onnx.backend import OnnxBackend

    cfg = load_config(str(CONFIG), load_host(), [f"deploy_inputs.img=[1,3,{S},{S}]"])
    torch.manual_seed(0)
    model = nets.randomise_bn(build(cfg.values["deploy_model"]), 0).eval()
    backend = OnnxBackend()
    assert backend.check(model, {"img": (1, 3, S, S)}) == []
    q = nets.quantize(
        model, [nets.images(2, seed=s, size=S) for s in (1, 2)], backend=backend, size=S
    )
    res = backend.compile(
        q, {"img": nets.images(2, seed=3, size=S)}, {"latency_runs": 2, "warmup_runs": 1}, tmp_path
    )
    r = res.report
    assert backend.check(q, {"img": (1, 3, S, S)}) == []
    assert r["nodes_by_op"]["MaxPool"] >= 2 and r["nodes_by_op"]["Resize"] >= 4
    # every requantized conv of the program runs as ORT's integer ConvInteger, bit-exact
    from fcos_core.quantization.integer_model import integer_program

    int_convs = sum(
        1
        for rec in integer_program(q.body)
        if rec.op.kind == "conv2d" and rec.op.dtype in ("int8", "int16")
    )
    assert r["ort_integer_convs"] == int_convs > 100
    assert r["agreement"]["within_0"] == 1.0, r["agreement"]
    assert len(r["outputs"]) == 20  # cls/box/ctr/max_logit at 5 strides
