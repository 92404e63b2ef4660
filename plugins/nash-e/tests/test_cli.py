"""``fcos infer`` and ``fcos compile`` end to end, and the plugin's registration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fcos_core.cli.main import main
from fcos_core.plugins import load_host
from fcos_plugin_nash_e.backend import NashEBackend


@pytest.fixture(scope="module")
def host():
    return load_host()


def test_plugin_module_is_torch_free_and_registers(fcos_host, fcos_torch_free):
    fcos_torch_free(
        "fcos_plugin_nash_e.plugin",
        "fcos_plugin_nash_e.schema",
        "fcos_plugin_nash_e.artifact",
        "fcos_plugin_nash_e.runtime",
        "fcos_plugin_nash_e.perf",
    )
    h = fcos_host(distributions=["fcos-plugin-nash-e"])
    assert h.registries["compile_backends"].get("nash_e") is not None
    assert h.registries["compile_backends"].get("NASH_E") is not None
    assert {"compile", "infer"} <= set(h.registries["commands"].names())


def test_compile_cfg_is_validated(tmp_path, host):
    from fcos_core.config import load_config
    from fcos_core.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    base = (
        "task_name: t\nckpt_dir: {d}\nmarch: nash_e\ncompile_cfg:\n  march: nash_e\n"
        "  name: m\n  out_dir: {d}/compile\n  hbm: {d}/compile/m.hbm\n"
        "  layer_details: true\n  input_source: [{src}]\n  opt: {opt}\n"
    )
    cfg.write_text(base.format(d=tmp_path, src="pyramid", opt="O3"))
    resolved = load_config(cfg, host)
    assert resolved.compile_options["opt"] == "O3"
    assert resolved.compile_options["input_source"] == ["pyramid"]
    cfg.write_text(base.format(d=tmp_path, src="camera", opt="O5"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, host)
    text = str(info.value)
    assert "compile_cfg.opt" in text and "compile_cfg.input_source" in text


def test_quantization_rules_are_the_targets():
    from fcos_core.quantization.rules import QuantRules

    rules = NashEBackend().quantization_rules()
    assert isinstance(rules, QuantRules)
    assert rules.input_scale == 1 / 128 and rules.activation_dtype == "int8"


def _png(path, rng, h, w):
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("source", ["pyramid", "ddr"])
def test_infer_prints_and_draws_detections(tmp_path, nash, host, capsys, source):
    from fcos_core.yuv import rgb_to_yuv444_uint8
    from fcos_plugin_nash_e.commands import letterbox

    det = nash.MiniDetector(nash.make_mini_fcos(seed=9, size=64), [4, 8]).eval()
    det.post_process.score_threshold = 0.05
    art = tmp_path / "m.hbm"
    NashEBackend().compile(
        det,
        {"img": torch.zeros(1, 3, 64, 64)},
        {
            "name": "m",
            "out_dir": str(tmp_path),
            "hbm": str(art),
            "opt": "O3",
            "input_source": [source],
        },
        tmp_path,
    )
    rng = np.random.default_rng(0)
    imgs = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(imgs[0], rng, 48, 80)  # letterboxed: scale 0.8, padded at the bottom
    _png(imgs[1], rng, 64, 64)
    code = main(
        ["infer", str(art), *map(str, imgs), "--json", "--save-vis", str(tmp_path / "vis")],
        host=host,
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == list(map(str, imgs))
    for r in out:
        assert (tmp_path / "vis" / (r["image"].split("/")[-1][:-4] + "_det.png")).exists()
    # independent reference: the integer model + the float decoder on the same input
    from PIL import Image

    rgb = np.asarray(Image.open(imgs[0]).convert("RGB"))
    boxed, scale = letterbox(rgb, (64, 64))
    x = (torch.from_numpy(rgb_to_yuv444_uint8(boxed).astype(np.float32)) - 128) / 128
    with torch.no_grad():
        codes = det(x[None])
    scales = [float(s) for s in det.body.output_scales()]
    floats = [c.double() * scales[i % 6] for i, c in enumerate(codes)]
    ref = det.post_process.detect([f.float() for f in floats], (64, 64))[0]
    got = out[0]["detections"]
    assert len(got) == len(ref["scores"]) > 0
    assert [d["label"] for d in got] == ref["labels"].tolist()
    np.testing.assert_allclose([d["score"] for d in got], ref["scores"].numpy(), atol=1e-4)
    exp_boxes = (ref["boxes"] / scale).numpy()
    exp_boxes[:, [0, 2]] = exp_boxes[:, [0, 2]].clip(0, 80)
    exp_boxes[:, [1, 3]] = exp_boxes[:, [1, 3]].clip(0, 48)
    np.testing.assert_allclose([d["box"] for d in got], exp_boxes, atol=0.06)


def test_infer_reports_a_damaged_artifact(tmp_path, host, capsys):
    bad = tmp_path / "bad.hbm"
    bad.write_bytes(b"FCOSNASH" + b"\0" * 10)
    img = tmp_path / "x.png"
    _png(img, np.random.default_rng(1), 8, 8)
    assert main(["infer", str(bad), str(img)], host=host) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "fcos compile" in err


def test_infer_save_vis_keeps_same_stem_images_apart_and_never_overwrites(
    tmp_path, nash, host, capsys
):
    det = nash.MiniDetector(nash.make_mini_fcos(seed=9, size=64), [4, 8]).eval()
    art = tmp_path / "m.hbm"
    NashEBackend().compile(
        det,
        {"img": torch.zeros(1, 3, 64, 64)},
        {
            "name": "m",
            "out_dir": str(tmp_path),
            "hbm": str(art),
            "opt": "O3",
            "input_source": ["ddr"],
        },
        tmp_path,
    )
    rng = np.random.default_rng(1)
    imgs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for p in imgs:
        p.parent.mkdir()
        _png(p, rng, 40, 56)
    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "x_det.png").write_bytes(b"drawn by me earlier")
    assert (
        main(["infer", str(art), *map(str, imgs), "--json", "--save-vis", str(vis)], host=host) == 0
    )
    out = json.loads(capsys.readouterr().out)
    written = [r["vis"] for r in out]
    assert len(set(written)) == 2 and str(vis / "x_det.png") not in written
    assert (vis / "x_det.png").read_bytes() == b"drawn by me earlier"
    from PIL import Image

    from fcos_core.cli.detections_output import draw_scale

    k = draw_scale(40, 56)  # small images are drawn enlarged by a whole factor (readable labels)
    for r, p in zip(out, imgs):  # each file is its own image
        assert Image.open(r["vis"]).size == (56 * k, 40 * k)
        drawn = np.asarray(Image.open(r["vis"]).convert("RGB"))
        source = np.asarray(Image.open(p).convert("RGB")).repeat(k, 0).repeat(k, 1)
        if not r["detections"]:
            assert np.array_equal(drawn, source)
