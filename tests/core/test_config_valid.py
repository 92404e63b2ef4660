"""A valid config resolves, validates and builds as documented."""

from __future__ import annotations

from fcos_core.build import build
from fcos_core.config import load_config


def test_good_config_builds(toy_host, good_yaml, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(good_yaml)
    cfg = load_config(path, toy_host)
    assert cfg.data["ckpt_dir"] == "./tmp/toy"
    trainer = build(cfg.values["float_trainer"])
    model = trainer["model"]
    assert model["backbone"]["depth"] == 3
    # defaults of omitted fields reach the factory; tuples are tuples
    assert model["backbone"]["size"] == (32, 32)
    assert model["backbone"]["strides"] == {8: 16}
    assert model["transforms"][0]["p"] == 0.2
    assert model["collate"].__name__ == "toy_collate"
    assert model["name"] is None


def test_each_reference_use_is_independent(toy_host, good_yaml, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(good_yaml)
    cfg = load_config(path, toy_host)
    a = build(cfg.values["model"])
    b = build(cfg.values["float_trainer"])["model"]
    assert a == b and a is not b
    a["backbone"]["channels"].append(99)
    assert 99 not in b["backbone"]["channels"]


def test_overrides_apply_before_references(toy_host, good_yaml, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(good_yaml)
    cfg = load_config(
        path, toy_host, ["task_name=other", "vars.num=5", "float_trainer.num_epochs=7"]
    )
    assert cfg.data["ckpt_dir"] == "./tmp/other"
    assert build(cfg.values["float_trainer"])["model"]["backbone"]["depth"] == 5
    assert cfg.data["float_trainer"]["num_epochs"] == 7


def test_yaml_anchors_and_escaped_dollar(toy_host, tmp_path):
    text = """\
task_name: t
ckpt_dir: "cost $${not_a_ref}"
vars:
  bb: &bb {type: toynet, depth: 2}
model: {type: ToyModel, backbone: *bb}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = load_config(path, toy_host)
    assert cfg.data["ckpt_dir"] == "cost ${not_a_ref}"
    assert build(cfg.values["model"])["backbone"]["depth"] == 2


def test_bare_string_is_a_type_block(toy_host, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "task_name: t\nckpt_dir: d\nmodel: {type: ToyModel, backbone: "
        "{type: toynet, depth: 1}, neck: toyneck}\n"
    )
    cfg = load_config(path, toy_host)
    assert build(cfg.values["model"])["neck"]["out_channels"] == 16
