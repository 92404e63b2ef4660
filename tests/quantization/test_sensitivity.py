"""``fcos quant-sensitivity``: the analysis on a tiny FCOS body checked against independent
measurements (a model calibrated with item 1's ``layer_precision`` rules, fake-quants switched
by hand), the suggestion, and the command end to end on the demo config (files, no overwrite)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from quant_nets import images, make_ctx, make_detector

from fcos_core.quantization.converters import Float2Calibration, freeze_observers
from fcos_core.quantization.observers import MinMaxObserver
from fcos_core.quantization.precision import parse_layer_precision
from fcos_core.quantization.prepare import fake_quants
from fcos_core.quantization.sensitivity import (
    ALL_INT16,
    LayerResult,
    analyse,
    layer_groups,
    suggest,
)

CALIB = [images(4, 100 + i) for i in range(3)]
X = images(8, 5)


def _calibrated(rules=(), model_seed=0):
    m = Float2Calibration(
        activation_observer=MinMaxObserver, integer_exact="off", layer_precision=list(rules)
    )(make_detector(model_seed), make_ctx())
    with torch.no_grad():
        for x in CALIB:
            m(x)
    freeze_observers(m)
    return m.eval()


@pytest.fixture(scope="module")
def reference():
    with torch.no_grad():
        return [o.clone() for o in make_detector(0)(X)]


@pytest.fixture(scope="module")
def fidelity(reference):
    """Higher is better: minus the mean relative squared error of the six head outputs."""

    def evaluate(model):
        with torch.no_grad():
            out = model(X)
        return -float(
            sum(((o - r) ** 2).mean() / (r**2).mean() for o, r in zip(out, reference))
            / len(reference)
        )

    return evaluate


@pytest.fixture(scope="module")
def analysis(fidelity):
    base, wide = _calibrated(), _calibrated(ALL_INT16)
    return analyse(base, wide, fidelity, "fidelity", max_loss=1e-4, max_layers=4), base


def test_reference_points_are_the_float_and_the_calibrated_models(analysis, fidelity):
    res, _ = analysis
    assert res.float_value == pytest.approx(0.0, abs=1e-9)  # BN folded: float up to rounding
    assert res.int8_value == pytest.approx(fidelity(_calibrated()), rel=1e-9)
    assert res.int8_value < res.float_value


def test_int16_gains_equal_models_calibrated_with_layer_precision_rules(analysis, fidelity):
    """Independent path: item 1's rules make the layer int16 in a new calibration."""
    res, _ = analysis
    ranked = [r for r in res.by_gain() if r.dtype == "int8"]
    top, bottom = ranked[0], ranked[-1]
    measured = {}
    for r in (top, bottom):
        model = _calibrated([{"layers": r.members, "activation": "int16"}])
        measured[r.name] = fidelity(model) - res.int8_value
        assert measured[r.name] == pytest.approx(r.gain, rel=1e-6, abs=1e-12)
    assert measured[top.name] >= measured[bottom.name]


def test_losses_equal_quantizing_the_layer_alone_by_hand(analysis, fidelity):
    res, base = analysis
    groups = {g.name: g for g in layer_groups(base)}
    ranked = res.by_loss()
    top, bottom = ranked[0], ranked[-1]
    measured = {}
    for r in (top, bottom):
        model = _calibrated()
        keep = {f"graph_module.{n}" for n in (*groups[r.name].activations, *groups[r.name].weights)}
        for name, fq in fake_quants(model.body):  # names under the PreparedBody
            fq.enable_fake_quant(name in keep)
        measured[r.name] = res.float_value - fidelity(model)
        assert measured[r.name] == pytest.approx(r.loss, rel=1e-6, abs=1e-12)
    assert measured[top.name] >= measured[bottom.name] and measured[top.name] > 0


def test_suggested_rules_parse_apply_and_measure_better_than_int8(analysis, fidelity):
    from fcos_core.quantization.precision import rules_yaml

    res, _ = analysis
    assert res.suggested and len(res.suggested) <= 4
    rules = parse_layer_precision(
        yaml.safe_load(rules_yaml(res.suggested_layers()))["layer_precision"]
    )
    model = _calibrated([{"layers": list(r.layers), "activation": "int16"} for r in rules])
    assert set(model.body.info["layer_dtypes"]) == set(res.suggested_layers())
    assert fidelity(model) == pytest.approx(res.suggested_value, rel=1e-6)
    assert res.suggested_value > res.int8_value


def test_groups_by_depth_cover_every_layer_once(analysis):
    _, base = analysis
    layers = layer_groups(base)
    grouped = layer_groups(base, depth=1)
    assert {g.name for g in grouped} == {"backbone", "neck", "head"}
    assert sorted(m for g in grouped for m in g.members) == sorted(g.name for g in layers)
    assert sorted(a for g in grouped for a in g.activations) == sorted(
        a for g in layers for a in g.activations
    )


def test_suggest_stops_at_the_loss_budget_and_skips_useless_layers():
    rows = [
        LayerResult("a", 0.01, 0.02, "int8"),
        LayerResult("b", 0.0, 0.005, "int8"),
        LayerResult("c", 0.0, -0.001, "int8"),
        LayerResult("d", 0.0, 0.01, "int8"),
    ]
    chosen, predicted = suggest(0.5, 0.46, rows, max_loss=0.015, max_layers=5)
    assert chosen == ["a", "d"] and predicted == pytest.approx(0.01)
    assert suggest(0.5, 0.46, rows, max_loss=0.0, max_layers=5)[0] == ["a", "d", "b"]
    assert suggest(0.5, 0.46, rows, max_loss=0.0, max_layers=1)[0] == ["a"]
    assert suggest(0.5, 0.499, rows, max_loss=0.005, max_layers=5)[0] == []


# -- the command ------------------------------------------------------------------------------


@pytest.mark.slow
def test_command_on_the_demo_config_writes_files_and_never_overwrites(
    tmp_path, monkeypatch, capsys
):
    from pathlib import Path

    from fcos_core.build import build
    from fcos_core.cli.main import main
    from fcos_core.config import load_config
    from fcos_core.plugins import load_host

    demo = str(Path(__file__).parents[2] / "configs" / "fcos_b0_demo.yaml")
    monkeypatch.chdir(tmp_path)
    ov = [
        f"ckpt_dir={tmp_path / 'ck'}",
        f"vars.data_root={tmp_path / 'data'}",
        "vars.batch_size_per_gpu=4",
    ]
    cfg = load_config(demo, load_host(), ov)
    torch.manual_seed(0)
    model = build(cfg.node("float_trainer").kwargs["model"])
    (tmp_path / "ck").mkdir()
    torch.save(
        {"state_dict": model.state_dict()}, tmp_path / "ck" / "float-checkpoint-best.pth.tar"
    )
    out = tmp_path / "out"
    args = [
        "quant-sensitivity",
        demo,
        *ov,
        "--max-images",
        "4",
        "--calib-steps",
        "1",
        "--depth",
        "1",
        "--run-dir",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "lost when only this layer is quantized" in printed and "backbone" in printed
    report = json.loads((out / "quant_sensitivity.json").read_text())
    assert {r["name"] for r in report["layers"]} == {"backbone", "neck", "head"}
    assert report["images"] == 4 and not math.isnan(report["float"])
    assert (out / "quant_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "quant_sensitivity.csv").read_text().splitlines()
    assert rows[0].startswith("rank,layer,loss,int16_gain") and len(rows) == 4
    parse_layer_precision(
        yaml.safe_load((out / "quant_sensitivity_rules.yaml").read_text())["layer_precision"]
    )
    # a user's file in the folder: refused before any work, the file untouched
    (out / "quant_sensitivity.csv").write_text("mine")
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "quant_sensitivity.csv").read_text() == "mine"
