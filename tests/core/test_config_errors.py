"""Malformed configs: each exits 2 with a message naming the offending path; no traceback."""

from __future__ import annotations

import pytest
from conftest import GOOD

from fcos_core.cli.main import main

BASE = "task_name: t\nckpt_dir: d\n"
MODEL = "model: {type: ToyModel, backbone: {type: toynet, depth: 1}}\n"

# (id, config text (None: the file is missing), text that must appear in the message)
CASES: list[tuple[str, str | None, str]] = [
    ("missing-file", None, "does not exist"),
    ("empty-file", "", "empty"),
    ("top-level-list", "- a\n- b\n", "top level must be a mapping"),
    ("top-level-scalar", "42\n", "top level must be a mapping"),
    ("invalid-yaml-indent", "task_name: t\n  ckpt_dir: d\n", "invalid YAML"),
    ("invalid-yaml-unclosed", "task_name: [t\n", "invalid YAML"),
    ("invalid-yaml-tab", "task_name: t\n\tckpt_dir: d\n", "invalid YAML"),
    ("python-tag", "task_name: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ("missing-required-top", "ckpt_dir: d\n", "missing required key 'task_name'"),
    ("typo-top-level", BASE + "modle: {type: ToyModel}\n", "did you mean 'model'"),
    ("typo-top-level-vars-hint", BASE + "num_classes: 80\n", "vars:"),
    ("wrong-type-top", "task_name: [a]\nckpt_dir: d\n", "task_name"),
    ("wrong-type-bool", BASE + "deterministic: maybe\n", "deterministic"),
    ("wrong-type-seed", BASE + "seed: 1.5\n", "seed"),
    (
        "unknown-component",
        BASE + "model: {type: ToyModle, backbone: {type: toynet, depth: 1}}\n",
        "did you mean 'ToyModel'",
    ),
    (
        "unknown-backbone-provider",
        BASE + "model: {type: ToyModel, backbone: {type: efficientnet}}\n",
        "fcos-plugin-efficientnet",
    ),
    ("no-type-key", BASE + "model: {backbone: {type: toynet, depth: 1}}\n", "no 'type' key"),
    ("type-not-string", BASE + "model: {type: 3}\n", "model.type"),
    ("block-not-mapping", BASE + "model: [1, 2]\n", "model"),
    (
        "typo-nested-key",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depht: 1}}\n",
        "did you mean 'depth'",
    ),
    (
        "missing-nested-required",
        BASE + "model: {type: ToyModel, backbone: {type: toynet}}\n",
        "model.backbone",
    ),
    (
        "nested-wrong-int",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: two}}\n",
        "model.backbone.depth",
    ),
    (
        "nested-bool-as-int",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: true}}\n",
        "model.backbone.depth",
    ),
    (
        "nested-literal",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1, activation: gelu}}\n",
        "model.backbone.activation",
    ),
    (
        "nested-list-item",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1, channels: [8, x]}}\n",
        "model.backbone.channels",
    ),
    (
        "nested-tuple-length",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1, size: [1, 2, 3]}}\n",
        "model.backbone.size",
    ),
    (
        "nested-dict-key",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1, strides: {a: 1}}}\n",
        "model.backbone.strides",
    ),
    (
        "list-of-components-not-list",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, "
        "depth: 1}, transforms: {type: ToyFlip}}\n",
        "model.transforms",
    ),
    (
        "list-item-unknown",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1}, "
        "transforms: [{type: ToyFlip}, {type: Flop}]}\n",
        "model.transforms[1]",
    ),
    (
        "list-item-bad-value",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1}, "
        "transforms: [{type: ToyFlip, p: high}]}\n",
        "model.transforms[0].p",
    ),
    (
        "named-unknown",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1}, collate: collate_3d}\n",
        "model.collate",
    ),
    (
        "named-not-string",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1}, collate: [a]}\n",
        "model.collate",
    ),
    ("ref-missing", BASE + "model: ${vars.nothere}\n", "does not exist"),
    (
        "ref-typo-suggest",
        BASE + "vars: {model: 1}\nfloat_trainer: {type: ToyTrainer, model: '${vars.modle}'}\n",
        "did you mean ${vars.model}",
    ),
    ("ref-cycle", BASE + "vars: {a: '${vars.b}', b: '${vars.a}'}\n", "reference cycle"),
    ("ref-self-cycle", BASE + "vars: {a: 'x${vars.a}'}\n", "reference cycle"),
    ("ref-malformed", BASE + "vars: {a: '${vars..b}'}\n", "malformed reference"),
    ("ref-block-in-string", BASE + "vars: {m: {a: 1}, s: 'x-${vars.m}'}\n", "cannot be placed"),
    (
        "trainer-model-wrong-kind",
        BASE + "float_trainer: {type: ToyTrainer, model: {type: toynet, depth: 1}}\n",
        "float_trainer.model.type",
    ),
    (
        "factory-rejects",
        BASE + "model: {type: ToyModel, backbone: {type: toynet, depth: 1}, "
        "neck: {type: toyneck, fail: true}}\n",
        "out_channels must be even",
    ),
    (
        "compile-unknown-march",
        BASE + "compile_cfg: {march: nash_e, hbm: x}\n",
        "fcos-plugin-nash-e",
    ),
    ("compile-no-march", BASE + "compile_cfg: {hbm: x}\n", "march"),
    (
        "alias-bomb",
        BASE + "vars:\n  a: &a [1,1,1,1,1,1,1,1,1,1]\n  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "  e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
        "anchors and aliases",
    ),
    ("not-utf8", "task_name: \xff\xfe\n", "not UTF-8"),
]


@pytest.mark.parametrize("case_id,text,expect", CASES, ids=[c[0] for c in CASES])
def test_malformed_config_exits_2(case_id, text, expect, toy_host, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    if text is not None:
        if case_id == "not-utf8":
            path.write_bytes(text.encode("latin-1"))
        elif case_id == "factory-rejects":
            path.write_text(text)
        else:
            path.write_text(text)
    argv = ["check", str(path)]
    if case_id == "factory-rejects":
        # construction-time errors surface when the block is built, e.g. by a stage
        from fcos_core.build import build
        from fcos_core.config import load_config
        from fcos_core.errors import ConfigError

        cfg = load_config(path, toy_host)
        with pytest.raises(ConfigError) as info:
            build(cfg.values["model"])
        assert "model.neck" in str(info.value) and expect in str(info.value)
        return
    code = main(argv, host=toy_host)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in err, err
    assert "Traceback" not in err
    assert "bad.yaml" in err or case_id == "missing-file"


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_all_problems_reported_at_once(toy_host, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "task_name: t\nckpt_dir: d\nseed: x\nmodle: 1\n"
        "model: {type: ToyModel, backbone: {type: toynet, depht: 1}}\n"
    )
    assert main(["check", str(path)], host=toy_host) == 2
    err = capsys.readouterr().err
    assert "4 problems" in err
    for needle in ("seed", "modle", "depht", "missing required key 'depth'"):
        assert needle in err
    # YAML line numbers point at the offending key
    assert "bad.yaml:3: seed" in err
    assert "bad.yaml:5: model.backbone.depht" in err


def test_good_config_checks(toy_host, tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["check", str(path)], host=toy_host) == 0
    assert "OK" in capsys.readouterr().out


def test_bad_override_and_stage(toy_host, tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["check", str(path), "novalue"], host=toy_host) == 2
    assert "key.path=value" in capsys.readouterr().err
    assert main(["check", str(path), "float_trainer.num_epochs=[1"], host=toy_host) == 2
    assert main(["run", str(path), "--stage", "flaot"], host=toy_host) == 2
    assert "did you mean 'float'" in capsys.readouterr().err


def test_debug_shows_traceback(toy_host, tmp_path, capsys):
    assert main(["--debug", "check", str(tmp_path / "nope.yaml")], host=toy_host) == 2
    assert "Traceback" in capsys.readouterr().err
