"""Overrides through ``${...}`` references, and ``fcos config show --resolved``'s origins."""

from __future__ import annotations

import yaml

from fcos_core.cli.main import main
from fcos_core.config import load_config
from fcos_core.config.loader import load_yaml
from fcos_core.config.references import apply_overrides

TEXT = """\
task_name: toy
ckpt_dir: ./tmp/${task_name}
vars:
  num: 3
  bb: {type: toynet, depth: "${vars.num}"}
  alias: ${vars.bb}
model: {type: ToyModel, backbone: "${vars.alias}"}
float_trainer: {type: ToyTrainer, model: "${model}", num_epochs: 2}
"""


def _write(tmp_path, text=TEXT):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_override_through_a_reference_lands_where_it_points(toy_host, tmp_path, capsys):
    path = _write(tmp_path)
    cfg = load_config(path, toy_host, ["model.backbone.depth=7"])
    # model.backbone -> vars.alias -> vars.bb: the value is written at the end of the chain
    assert cfg.raw["vars"]["bb"]["depth"] == 7
    assert cfg.data["model"]["backbone"]["depth"] == 7
    assert cfg.data["float_trainer"]["model"]["backbone"]["depth"] == 7
    (record,) = cfg.overrides
    assert record.path == ("vars", "bb", "depth")
    err = capsys.readouterr().err
    assert "applied to vars.bb.depth" in err
    assert "model.backbone is ${vars.alias}" in err and "vars.alias is ${vars.bb}" in err


def test_plain_override_says_nothing(toy_host, tmp_path, capsys):
    cfg = load_config(_write(tmp_path), toy_host, ["float_trainer.num_epochs=5"])
    assert cfg.data["float_trainer"]["num_epochs"] == 5
    assert cfg.overrides[0].note() is None
    assert "note:" not in capsys.readouterr().err


def test_no_such_item_names_what_is_there(toy_host, tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["check", str(path), "task_name.x=1"], host=toy_host) == 2
    err = capsys.readouterr().err
    assert "no such item" in err and "task_name is the value 'toy'" in err
    assert "Traceback" not in err


def test_override_reference_cycle_is_an_error(toy_host, tmp_path, capsys):
    path = _write(tmp_path, "task_name: t\nckpt_dir: d\nvars: {a: '${vars.b}', b: '${vars.a}'}\n")
    assert main(["config", "show", str(path), "vars.a.x=1"], host=toy_host) == 2
    assert "cycle" in capsys.readouterr().err


def test_unresolved_show_applies_through_references(tmp_path, capsys):
    data, _ = load_yaml(_write(tmp_path))
    (record,) = apply_overrides(data, ["model.backbone.depth=9"], "c.yaml")
    assert data["vars"]["bb"]["depth"] == 9 and data["model"]["backbone"] == "${vars.alias}"
    assert record.via == (
        (("model", "backbone"), ("vars", "alias")),
        (("vars", "alias"), ("vars", "bb")),
    )


def test_show_resolved_names_each_values_origin(toy_host, tmp_path, capsys):
    path = _write(tmp_path)
    assert (
        main(["config", "show", str(path), "--resolved", "model.backbone.depth=4"], host=toy_host)
        == 0
    )
    out = capsys.readouterr().out
    cfg = load_config(path, toy_host, ["model.backbone.depth=4"])
    assert yaml.safe_load(out) == cfg.data  # the comments do not change the data
    lines = {ln.split(":")[0].strip(): ln for ln in out.splitlines()}
    assert lines["task_name"].endswith("# line 1")
    assert lines["ckpt_dir"].endswith("# line 2, formatted from ${task_name}")
    assert lines["num_epochs"].endswith("# line 8")
    # model.backbone.type: written under vars.bb (line 5); depth: the override
    backbone = out[out.index("\nmodel:") :]
    assert "type: toynet  # vars.bb.type, line 5" in backbone
    assert "depth: 4  # vars.bb.depth, override model.backbone.depth=4" in backbone


def test_show_resolved_round_trips_int_keys_lists_and_quoted_strings(toy_host, tmp_path, capsys):
    path = _write(
        tmp_path,
        TEXT.replace(
            "vars:\n", "vars:\n  strides: {8: 16, 16: [1, {a: 2}]}\n  empty: []\n  s: 'a: b # c'\n"
        ),
    )
    assert main(["config", "show", str(path), "--resolved"], host=toy_host) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == load_config(path, toy_host).data
