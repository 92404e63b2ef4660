"""Registration, YAML validation, and the seed's backbone + neck trained one step at 512."""

from __future__ import annotations

import pytest
import torch

from fcos_core.build import build
from fcos_core.config.loader import parse_yaml_text
from fcos_core.config.validate import Validator
from fcos_core.errors import ConfigError

# the seed config's model.backbone and model.neck, as YAML
SEED_YAML = """
backbone:
  type: efficientnet
  bn_kwargs: {}
  model_type: b0
  num_classes: 1000
  include_top: false
  activation: relu
  use_se_block: false
neck:
  type: BiFPN
  in_strides: [2, 4, 8, 16, 32]
  out_strides: [8, 16, 32, 64, 128]
  stride2channels: {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
  out_channels: 64
  num_outs: 5
  stack: 3
  start_level: 2
  end_level: -1
  fpn_name: bifpn_sum
"""


@pytest.fixture
def host(fcos_host):
    """fcos-core, this plugin and the seed's backbone only, whatever else is installed."""
    return fcos_host(distributions=["fcos-plugin-bifpn", "fcos-plugin-efficientnet"])


def validate(host, text, kind="necks", key="neck"):
    data, lines = parse_yaml_text(text)
    validator = Validator(host.registries, lines)
    return validator.check_component(kind, data[key], (key,)), validator.problems


def test_registered_by_its_distribution(host):
    entry = host.registries["necks"].lookup("BiFPN")
    assert entry.distribution == "fcos-plugin-bifpn"
    assert entry.doc.startswith("BiFPN")


def test_schema_matches_the_factory(host, fcos_schema_check):
    fcos_schema_check("necks", "BiFPN", host=host)


def test_plugin_module_does_not_import_torch(fcos_torch_free):
    fcos_torch_free("fcos_plugin_bifpn.plugin", "fcos_plugin_bifpn.schema")


def test_schema_reports_bad_values_at_their_paths(host):
    text = (
        SEED_YAML.replace("fpn_name: bifpn_sum", "fpn_name: bifpn_max")
        .replace("stack: 3", "stack: three")
        .replace("{2: 16,", "{2: sixteen,")
    )
    _, problems = validate(host, text)
    assert {p.path for p in problems} == {"neck.fpn_name", "neck.stack", "neck.stride2channels"}


def test_construction_errors_become_config_errors(host):
    node, problems = validate(host, SEED_YAML.replace("num_outs: 5", "num_outs: 4"))
    assert problems == []
    with pytest.raises(ConfigError, match="out_strides"):
        build(node)


def test_seed_backbone_and_neck_forward_backward_at_512(host):
    # the seed's backbone comes from the sibling plugin; a visible skip if it is not installed
    pytest.importorskip("fcos_plugin_efficientnet", reason="needs fcos-plugin-efficientnet")
    backbone_node, p1 = validate(host, SEED_YAML, "backbones", "backbone")
    neck_node, p2 = validate(host, SEED_YAML)
    assert p1 == p2 == []
    backbone, neck = build(backbone_node), build(neck_node)
    neck.check_inputs(backbone.out_strides, backbone.out_channels)
    model = torch.nn.Sequential(backbone, neck).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)
    image = torch.randn(1, 3, 512, 512)
    outs = model(image)
    assert [tuple(o.shape) for o in outs] == [
        (1, 64, 512 // s, 512 // s) for s in (8, 16, 32, 64, 128)
    ]
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    stem_grad = backbone.stem.conv.weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
    before = backbone.stem.conv.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, backbone.stem.conv.weight)
