"""Registration through the plugin host and building from a validated YAML block."""

from __future__ import annotations

import pytest

from fcos_core.build import build
from fcos_core.config.loader import parse_yaml_text
from fcos_core.config.validate import Validator
from fcos_core.errors import ConfigError

SEED_BACKBONE = """
backbone:
  type: efficientnet
  bn_kwargs: {}
  model_type: b0
  num_classes: 1000
  include_top: false
  activation: relu
  use_se_block: false
"""


@pytest.fixture
def host(fcos_host):
    """fcos-core and this plugin only, whatever else is installed."""
    return fcos_host(distributions=["fcos-plugin-efficientnet"])


def validate(host, text):
    data, lines = parse_yaml_text(text)
    validator = Validator(host.registries, lines)
    node = validator.check_component("backbones", data["backbone"], ("backbone",))
    return node, validator.problems


def test_registered_by_its_distribution(host):
    entry = host.registries["backbones"].lookup("efficientnet")
    assert entry.distribution == "fcos-plugin-efficientnet"
    assert entry.doc.startswith("EfficientNet")


def test_schema_matches_the_factory(host, fcos_schema_check):
    fcos_schema_check("backbones", "efficientnet", host=host)


def test_plugin_module_does_not_import_torch(fcos_torch_free):
    fcos_torch_free("fcos_plugin_efficientnet.plugin", "fcos_plugin_efficientnet.schema")


def test_seed_block_validates_and_builds(host):
    node, problems = validate(host, SEED_BACKBONE)
    assert problems == []
    model = build(node)
    assert model.out_strides == [2, 4, 8, 16, 32]
    assert model.out_channels == [16, 24, 40, 112, 320]
    assert not model.include_top


def test_bad_values_are_reported_at_their_path(host):
    _, problems = validate(
        host,
        SEED_BACKBONE.replace("activation: relu", "activation: gelu").replace(
            "model_type: b0", "model_type: b9"
        ),
    )
    where = {p.path for p in problems}
    assert where == {"backbone.activation", "backbone.model_type"}


def test_construction_errors_become_config_errors(host):
    node, problems = validate(host, SEED_BACKBONE + "  drop_connect_rate: 1.5\n")
    assert problems == []
    with pytest.raises(ConfigError, match="drop_connect_rate"):
        build(node)
