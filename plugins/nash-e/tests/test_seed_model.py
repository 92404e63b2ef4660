"""`fcos compile CONFIG` on the reference architecture (EfficientNet-B0 relu no-SE, BiFPN sum,
FCOS head with int16 outputs, compile filter) through the real quantization flow, then the
artifact against the integer model, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcos_core.cli.main import main
from fcos_core.plugins import load_host
from fcos_plugin_nash_e.backend import NashEBackend

CONFIG = """
task_name: nash_e_compile_test
ckpt_dir: {d}/ckpt
seed: 0
march: nash_e
deploy_model:
  type: FCOS
  backbone: {{type: efficientnet, model_type: b0, include_top: false, activation: relu,
             use_se_block: false, num_classes: 1000}}
  neck: {{type: BiFPN, in_strides: [2, 4, 8, 16, 32], out_strides: [8, 16, 32, 64, 128],
         stride2channels: {{2: 16, 4: 24, 8: 40, 16: 112, 32: 320}}, out_channels: 64,
         num_outs: 5, stack: 3, start_level: 2, end_level: -1, fpn_name: bifpn_sum}}
  head: {{type: FCOSHead, num_classes: 80, in_strides: [8, 16, 32, 64, 128],
         out_strides: [8, 16, 32, 64, 128],
         stride2channels: {{8: 64, 16: 64, 32: 64, 64: 64, 128: 64}}, feat_channels: 64,
         stacked_convs: 4, int8_output: false, int16_output: true, dequant_output: false}}
  post_process: {{type: FCOSMultiStrideFilter, strides: [8, 16, 32, 64, 128],
                 threshold: -2.944, for_compile: true, max_shape: [128, 128]}}
deploy_inputs: {{img: [1, 3, 128, 128]}}
deploy_model_convert_pipeline:
  type: ModelConvertPipeline
  qat_mode: fuse_bn
  converters: [{{type: Float2QAT}}, {{type: QAT2Quantize}}]
compile_cfg:
  march: nash_e
  name: fcos_b0_128
  out_dir: {d}/ckpt/compile
  hbm: {d}/ckpt/compile/model.hbm
  layer_details: true
  input_source: [pyramid]
  opt: O3
"""


@pytest.mark.slow
def test_fcos_compile_reference_architecture(tmp_path, nash, capsys):
    host = load_host()
    if (
        not {"efficientnet"} <= set(host.registries["backbones"].names())
        or "BiFPN" not in host.registries["necks"].names()
    ):
        pytest.skip("efficientnet / bifpn plugins are not installed")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(CONFIG.format(d=tmp_path))
    assert main(["compile", str(cfg_path), "--run-dir", str(tmp_path / "run")], host=host) == 0
    hbm = tmp_path / "ckpt" / "compile" / "model.hbm"
    assert f"compiled: {hbm}" in capsys.readouterr().out
    assert (tmp_path / "ckpt" / "compile" / "fcos_b0_128_layers.html").exists()

    # the same model again (same seed): the artifact must equal it bit for bit
    from fcos_core.config import load_config
    from fcos_core.engine.compile_stage import deploy_model
    from fcos_core.engine.context import RunContext
    from fcos_core.engine.runtime import seed_everything

    cfg = load_config(cfg_path, host)
    seed_everything(0)
    ctx = RunContext(
        stage="compile",
        ckpt_dir=tmp_path / "ckpt",
        config=cfg,
        example_inputs={"img": (1, 3, 128, 128)},
        backend=NashEBackend(),
    )
    model, _ = deploy_model(cfg, ctx)
    backend = NashEBackend()
    runtime = backend.load(hbm)
    frames = nash.random_images(3, (128, 128), seed=21)
    with torch.no_grad():
        ref = model(nash.to_float_input(frames))
    out = backend.run(runtime, {"img": list(frames)})
    assert len(out) == len(ref) == 20  # 5 strides x (cls, box, ctr, max logit)
    for r, o in zip(ref, out):
        assert o.dtype == np.int16 and np.array_equal(r.numpy(), o)
