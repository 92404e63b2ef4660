"""``fcos ops``: MAC and parameter counts against FlopCounterMode and hand counts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcos_core.errors import FcosUserError
from fcos_core.models.ops_count import count_macs, model_report, ops_command, parse_shape


def test_hand_counted_conv_and_linear():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    total, per = count_macs(net, torch.zeros(1, 3, 16, 16), {"conv": net[0]})
    assert per["conv"] == 8 * 8 * 8 * 3 * 3 * 3  # out elements x (in/groups) x kh x kw
    assert total == per["conv"] + 512 * 10


def test_fcos_counts_match_flop_counter(tiny):
    model = tiny.make_fcos(num_classes=5, strides=(8, 16, 32)).eval()
    rep = model_report(model, (1, 3, 96, 96))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, 96, 96))
    assert rep["macs"] * 2 == fc.get_total_flops()  # FlopCounterMode counts 2 FLOPs per MAC
    assert set(rep["modules"]) == {"backbone", "neck", "head"}
    assert sum(m["macs"] for m in rep["modules"].values()) == rep["macs"]
    assert rep["params"] == sum(p.numel() for p in model.parameters())
    assert rep["modules"]["head"]["params"] == sum(p.numel() for p in model.head.parameters())
    # hand count of the head: its shared convs run at every stride (12x12 + 6x6 + 3x3 = 189
    # positions); per position 2 towers x 2 layers x (dw 32*9 + pw 32*32) + 3x3 predictors
    # 32*9*(5 + 4 + 1)
    per_position = 2 * 2 * (32 * 9 + 32 * 32) + 32 * 9 * (5 + 4 + 1)
    assert rep["modules"]["head"]["macs"] == 189 * per_position
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.zeros(1, 3, 96, 96)))
        with FlopCounterMode(display=False) as fc_head:
            model.head(feats)
    assert rep["modules"]["head"]["macs"] * 2 == fc_head.get_total_flops()


def test_ops_command_table_and_json(host_and_config, capsys):
    host, path = host_and_config
    args = argparse.Namespace(config=str(path), overrides=[], input_shape="1,3,64,64", json=True)
    assert ops_command(args, host) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [1, 3, 64, 64]
    model, deploy = data["models"]["model"], data["models"]["deploy_model"]
    assert model["type"] == "FCOS" and set(model["modules"]) == {"backbone", "neck", "head"}
    # same body: same counts (losses and post-process hold no parameters or convs)
    assert model["params"] == deploy["params"] and model["macs"] == deploy["macs"] > 0
    args.json = False
    args.overrides = ["vars.head.feat_channels=16", "vars.head.stacked_convs=1"]
    assert ops_command(args, host) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[1].split() == ["module", "params", "MACs"]
    assert any(line.startswith("model (FCOS)") for line in lines)
    assert any(line.strip().startswith("head") for line in lines)
    assert "deploy_model (FCOS)" in table


def test_ops_cli_is_registered():
    out = subprocess.run(
        [sys.executable, "-m", "fcos_core", "ops", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--input-shape" in out.stdout and "--json" in out.stdout


def test_parse_shape():
    assert parse_shape("1,3,512,512") == (1, 3, 512, 512)
    with pytest.raises(FcosUserError, match="N,C,H,W"):
        parse_shape("1,3,512")


def test_registration_module_is_torch_free(fcos_torch_free):
    fcos_torch_free("fcos_core.builtin.model")
