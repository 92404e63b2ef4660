"""``fcos onnx-compare`` and the engine's compile stage with ``march: onnx``, on a tiny config
(stand-in backbone/neck, the demo data generator at 64x64, a QAT checkpoint written here)."""

from __future__ import annotations

import argparse
import json

import onnx_testnets as nets
import pytest
import torch

pytest.importorskip("fcos_plugin_coco")

CONFIG = """
task_name: onnx_tiny
ckpt_dir: {ckpt}
seed: 0
march: onnx
vars:
  head: &head
    type: FCOSHead
    num_classes: 5
    in_strides: [8, 16, 32]
    out_strides: [8, 16, 32]
    stride2channels: {{8: 32, 16: 32, 32: 32}}
    feat_channels: 32
    stacked_convs: 2
    int8_output: false
    int16_output: true
    dequant_output: true
model:
  type: FCOS
  backbone: {{type: onnx_test_backbone}}
  neck: {{type: onnx_test_neck}}
  head: *head
  post_process: {{type: FCOSMultiStrideFilter, strides: [8, 16, 32], max_shape: [64, 64]}}
deploy_model:
  type: FCOS
  backbone: {{type: onnx_test_backbone}}
  neck: {{type: onnx_test_neck}}
  head: {{<<: *head, dequant_output: false}}
  post_process: {{type: FCOSMultiStrideFilter, strides: [8, 16, 32], for_compile: true,
                  max_shape: [64, 64]}}
deploy_inputs: {{img: [1, 3, 64, 64]}}
deploy_model_convert_pipeline:
  type: ModelConvertPipeline
  qat_mode: fuse_bn
  converters: [{{type: Float2QAT}}, {{type: QAT2Quantize}}]
val_data_loader:
  type: DataLoader
  dataset:
    type: Coco
    data_path: {demo}/val_lmdb
    transforms:
      - {{type: Resize, img_scale: [64, 64], keep_ratio: true}}
      - {{type: Pad, size: [64, 64]}}
      - {{type: ToTensor, to_yuv: true}}
      - {{type: Normalize, mean: 128.0, std: 128.0}}
  batch_size: 4
  collate_fn: collate_2d
compile_cfg:
  march: onnx
  name: tiny
  out_dir: {ckpt}/compile
  latency_runs: 3
  warmup_runs: 1
  input_source: [ddr]
int_infer_predictor:
  type: Predictor
  model: ${{model}}
  model_convert_pipeline:
    type: ModelConvertPipeline
    qat_mode: fuse_bn
    converters:
      - {{type: Float2QAT}}
      - {{type: LoadCheckpoint, checkpoint_path: "{ckpt}/qat-checkpoint-best.pth.tar",
         ignore_extra: true}}
      - {{type: QAT2Quantize}}
  data_loader: ["${{val_data_loader}}"]
  metrics: {{type: COCODetectionMetric, ann_file: {demo}/instances_val.json}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Config, plugin host, demo data and a calibrated QAT checkpoint."""
    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.convert_context import ConvertContext
    from fcos_core.plugins import load_host
    from fcos_core.quantization.converters import Float2QAT, freeze_observers
    from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo

    root = tmp_path_factory.mktemp("onnx_cfg")
    demo, ckpt = root / "demo", root / "ckpt"
    ensure_demo(
        str(demo),
        DemoParams(
            num_train=2, num_val=8, image_size=64, min_object=12, max_object=40, max_objects=3
        ),
    )
    path = root / "tiny.yaml"
    path.write_text(CONFIG.format(ckpt=ckpt, demo=demo))
    host = load_host(plugins=[("onnx-test-stand-ins", nets.StandIns())])
    cfg = load_config(str(path), host, [])
    model = nets.randomise_bn(build(cfg.values["model"]), 5).eval()
    ctx = ConvertContext(example_inputs={"img": (1, 3, 64, 64)})
    qat = Float2QAT()(model, ctx)
    qat.body.train()  # a QAT model's ranges move only in training mode
    with torch.no_grad():
        for s in range(2):
            qat(nets.images(4, seed=s))
    qat.eval()
    freeze_observers(qat)
    ckpt.mkdir()
    torch.save(qat.state_dict(), ckpt / "qat-checkpoint-best.pth.tar")
    return {"path": path, "host": host, "cfg": cfg, "ckpt": ckpt}


def test_evaluate_onnx_vs_int_infer(setup):
    from fcos_plugin_onnx.compare import evaluate_onnx_vs_int_infer

    lines: list[str] = []
    res = evaluate_onnx_vs_int_infer(setup["path"], host=setup["host"], log=lines.append)
    assert res["images"] == 8
    for key in ("mAP", "AP50", "AR100"):
        assert key in res["int_infer"] and key in res["onnx"]
    assert abs(res["mAP_difference"]) <= 0.003
    assert res["agreement"]["elements"] > 0 and res["agreement"]["within_2"] == 1.0
    assert res["agreement"]["within_0"] == 1.0  # integer requantization: bit-exact
    assert res["onnx_report"]["ort_integer_convs"] > 0
    assert any(line.startswith("int_infer mAP") for line in lines)
    assert any(line.startswith("onnx      mAP") for line in lines)


def test_onnx_compare_command_json(setup, capsys):
    from fcos_plugin_onnx.compare import compare_command

    args = argparse.Namespace(
        config=str(setup["path"]), overrides=[], max_batches=1, threads=1, out_dir=None, json=True
    )
    assert compare_command(args, setup["host"]) == 0
    text = capsys.readouterr().out  # log lines (unconfigured structlog) come before the JSON
    out = json.loads(text[text.index("{\n") :])
    assert out["images"] == 4 and set(out) >= {"int_infer", "onnx", "mAP_difference"}


def test_compile_stage_with_march_onnx(setup, tmp_path):
    """The engine's compile stage (as `fcos compile` runs it) with this backend."""
    from fcos_core.engine.pipeline import run_pipeline

    assert setup["cfg"].compile_backend.name == "onnx"
    assert run_pipeline(setup["cfg"], setup["host"], ["compile"], run_dir=str(tmp_path)) == 0
    out = setup["ckpt"] / "compile"
    assert (out / "model.onnx").is_file()
    report = json.loads((out / "tiny_onnx_report.json").read_text())
    assert report["latency"]["runs"] == 3 and report["agreement"]["within_2"] == 1.0
    assert [o["name"] for o in report["outputs"]][-1] == "max_logit_32"
    # the deploy table: ORT and the integer model on the 8 validation images, bit-exact
    # (integer requantization), timed, both scored by COCO mAP on the same data
    table = json.loads((tmp_path / "summary.json").read_text())["compile"]["deploy_table"]
    integer, onnx = table["rows"]
    assert onnx["backend"] == "onnx" and onnx["within_0"] == 1.0 and onnx["max_steps"] == 0
    assert table["agreement"]["images"] == 8
    assert {p["name"] for p in table["agreement"]["per_output"]} == {
        o["name"] for o in report["outputs"]
    }  # the core names every output as the export
    assert onnx["mAP"] is not None and onnx["mAP"] == integer["mAP"]
    assert onnx["p50_ms"] > 0 and integer["p50_ms"] > 0
    assert (tmp_path / "deploy_table.csv").is_file()


@pytest.mark.slow
def test_compile_stage_fails_an_artifact_beyond_one_step(setup, tmp_path, monkeypatch):
    """ORT's max logits moved by 2 steps: the compile stage (the core rule) refuses the
    artifact, naming the outputs; compile_cfg.allow_disagreement keeps it with a warning."""
    from fcos_core.config import load_config
    from fcos_core.engine.pipeline import run_pipeline
    from fcos_core.errors import FcosUserError
    from fcos_plugin_onnx.backend import OnnxBackend

    real = OnnxBackend.run

    def shifted(self, program, inputs):
        outs = list(real(self, program, inputs))
        for i in range(len(outs) - 3, len(outs)):  # max_logit_8, _16, _32
            outs[i] = outs[i] + 2
        return tuple(outs)

    monkeypatch.setattr(OnnxBackend, "run", shifted)
    with pytest.raises(FcosUserError, match="max_logit_8") as err:
        run_pipeline(setup["cfg"], setup["host"], ["compile"], run_dir=str(tmp_path / "a"))
    assert "march onnx" in str(err.value) and "allow_disagreement" in err.value.hint
    cfg = load_config(str(setup["path"]), setup["host"], ["compile_cfg.allow_disagreement=true"])
    assert run_pipeline(cfg, setup["host"], ["compile"], run_dir=str(tmp_path / "b")) == 0
    table = json.loads((tmp_path / "b" / "summary.json").read_text())["compile"]["deploy_table"]
    assert table["rows"][1]["max_steps"] == 2 and table["rows"][1]["within_1"] < 0.999


def test_unknown_compile_option_is_a_config_error(setup, tmp_path):
    from fcos_core.config import load_config
    from fcos_core.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        setup["path"].read_text().replace("  warmup_runs: 1\n", "  warmup_runs: 1\n  opt: O3\n")
    )
    with pytest.raises(ConfigError, match="unknown key 'opt'"):
        load_config(str(bad), setup["host"], [])
