"""OpenVINO against the fcos integer model at the calibration size and at other input sizes, on
photo-like images (issue 18: the integer model, ONNX Runtime, OpenVINO and the NASH-E runtime
within one step on >= 99.9 % of the codes at 512 x 512; measured here: bit-exact).

Root cause of OpenVINO's disagreement, found here: the onnx plugin's exact export computes the
requantization ``acc * M >> n`` in int64, and OpenVINO's CPU plugin runs int64 as int32
(openvinotoolkit/openvino #35823): the products wrap and the first conv is already off by up to
127 steps. The backend lowers that arithmetic to int32 digits (``int32_requant``), which
OpenVINO runs exactly; the tests below hold OpenVINO (and ONNX Runtime on the same lowered
graph) to every code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_testnets as nets
import pytest
import torch

from fcos_plugin_openvino.backend import OpenVinoBackend

CALIB = nets.SIZE  # the stand-in detector is calibrated at 64 x 64
#: the calibration size, larger squares and a non-square (landscape) input
SIZES = [(CALIB, CALIB), (128, 128), (96, 160), (256, 256), (512, 512)]


@pytest.fixture(scope="module")
def stand_in():
    """An untrained stand-in detector with varied BN statistics (a for_compile deploy model:
    int16 head codes and the per-stride max logits)."""
    return nets.randomise_bn(
        nets.make_fcos(seed=0, train=False, for_compile=True, dequant_output=False), 1
    ).eval()


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_openvino_is_bit_exact_at_every_size(stand_in, tmp_path, hw):
    """Calibrated at 64 x 64, compiled for ``hw``: every output code of OpenVINO equal to the
    integer model's, on the example scenes and on other scenes through load/run."""
    h, w = hw
    q = nets.quantize_for_size(stand_in, [nets.scenes(4, seed=s) for s in (1, 2)], CALIB, hw)
    x = nets.scenes(1 if h * w > 256 * 256 else 2, seed=h + w, height=h, width=w)
    backend = OpenVinoBackend(threads=1)
    res = backend.compile(q, {"img": x}, {"latency_runs": 0}, tmp_path)
    agr = res.report["agreement"]
    assert agr["elements"] > 0 and agr["within_0"] == 1.0 and agr["max_steps"] == 0, agr
    other = nets.scenes(1, seed=h * w, height=h, width=w)
    got = backend.run(backend.load(res.artifact), {"img": other})
    with torch.no_grad():
        want = q(other)
    for g, r in zip(got, want):
        assert np.array_equal(g, r.numpy())


def test_lowered_graph_is_bit_exact_under_onnx_runtime_too(stand_in):
    """The int32 lowering is a rewrite of the same integers, not an OpenVINO workaround that
    happens to match: ONNX Runtime runs the lowered graph to the same codes, and it holds no
    int64 arithmetic (the ops OpenVINO would run in int32)."""
    from fcos_core.quantization.find_integer import require_integer_model
    from fcos_core.quantization.integer_model import integer_program
    from fcos_plugin_onnx.session import make_session
    from fcos_plugin_openvino.backend import export_for_openvino
    from fcos_plugin_openvino.int32_requant import int64_arithmetic

    hw = (256, 256)
    q = nets.quantize_for_size(stand_in, [nets.scenes(4, seed=s) for s in (1, 2)], CALIB, hw)
    int_model, post = require_integer_model(q)
    x = nets.scenes(1, seed=21, height=256)
    exported, lowered = export_for_openvino(
        int_model,
        integer_program(int_model),
        tuple(x.shape),
        strides=nets.STRIDES,
        max_logit=post is not None,
        pyramid=False,
        requantization="integer",
        opset=21,
        name="t",
    )
    assert lowered > 0 and int64_arithmetic(exported.model) == []
    sess, _ = make_session(exported.model.SerializeToString(), ["CPUExecutionProvider"], 1)
    got = sess.run(None, {"img": x.numpy()})
    with torch.no_grad():
        want = q(x)
    for g, r in zip(got, want):
        assert np.array_equal(g, r.numpy())


def test_float_requantization_is_openvinos_own_int8_path(stand_in, tmp_path):
    """``requantization: float``: the standard QDQ graph, which OpenVINO runs with its own
    float requantization: codes within a step of the integer model's on this small model (the
    compile reports it; exactness is the integer mode's promise, not this one's)."""
    q = nets.quantize_for_size(
        stand_in, [nets.scenes(4, seed=s) for s in (1, 2)], CALIB, (CALIB, CALIB)
    )
    res = OpenVinoBackend(threads=1).compile(
        q, {"img": nets.scenes(4, seed=5)}, {"latency_runs": 0, "requantization": "float"}, tmp_path
    )
    r = res.report
    assert r["requantizations_lowered_to_int32"] == 0
    assert r["agreement"]["within_1"] >= 0.999 and r["agreement"]["max_steps"] <= 2


pytest.importorskip("fcos_plugin_efficientnet")
pytest.importorskip("fcos_plugin_bifpn")
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "fcos_b0_demo.yaml"


@pytest.mark.skipif(not CONFIG.is_file(), reason="needs the repository's demo config")
def test_b0_bifpn_calibrated_at_128_compiled_at_512_is_bit_exact(tmp_path):
    """The issue's case: the demo architecture (EfficientNet-B0 + BiFPN + FCOS head),
    calibrated at 128 x 128 and compiled for 512 x 512. The integer model, OpenVINO and ONNX
    Runtime (the onnx backend's artifact) give the same codes."""
    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.plugins import load_host
    from fcos_plugin_onnx.backend import OnnxBackend

    size = 512
    cfg = load_config(str(CONFIG), load_host(), [f"vars.input_size={size}"])
    torch.manual_seed(0)
    model = nets.randomise_bn(build(cfg.values["deploy_model"]), 0).eval()
    backend = OpenVinoBackend(threads=1)
    q = nets.quantize_for_size(
        model,
        [nets.scenes(2, seed=s, height=128) for s in (1, 2)],
        128,
        (size, size),
        backend=backend,
    )
    x = nets.scenes(1, seed=9, height=size)
    res = backend.compile(q, {"img": x}, {"latency_runs": 0}, tmp_path / "ov")
    agr = res.report["agreement"]
    assert agr["elements"] > 0 and agr["within_0"] == 1.0 and agr["max_steps"] == 0, agr
    ort = OnnxBackend(threads=1)
    ort_out = ort.run(
        ort.load(
            ort.compile(
                q, {"img": x}, {"latency_runs": 0, "agreement_check": False}, tmp_path / "onnx"
            ).artifact
        ),
        {"img": x},
    )
    ov_out = backend.run(backend.load(res.artifact), {"img": x})
    assert len(ort_out) == len(ov_out)
    for a, b in zip(ort_out, ov_out):
        assert np.array_equal(a, b)
