"""Every stage's optimizer is checked before the first stage starts (issue 14, item 11), and
``fcos run --thp`` (issue 14, item 12)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from conftest import TINY_CONFIG
from engine_standins import TinyDet

from fcos_core.engine import hugepages
from fcos_core.engine.launch import child_argv
from fcos_core.engine.optimizers import SGD
from fcos_core.errors import FcosUserError

TYPO = "qat_trainer.optimizer.params={weigth: {weight_decay: 0.0}}"


def test_a_params_key_that_selects_nothing_gets_a_did_you_mean():
    model = TinyDet(channels=4)
    with pytest.raises(
        ValueError,
        match=r"did you mean 'weigth' -> 'weight', "
        r"'bn1\.bais' -> 'bn1\.bias'\?",
    ):
        SGD(
            model,
            lr=0.1,
            params={"weigth": {"weight_decay": 0.0}, "bn1.bais": {"weight_decay": 0.0}},
        )


def test_fcos_check_reports_a_params_key_typo_without_torch(host, tmp_path, capsys):
    from fcos_core.cli.main import main

    assert main(["check", str(TINY_CONFIG), TYPO], host=host) == 2
    err = capsys.readouterr().err
    assert "qat_trainer.optimizer.params.weigth" in err and "did you mean 'weight'?" in err
    assert "tiny_pipeline.yaml" in err
    assert main(["check", str(TINY_CONFIG)], host=host) == 0


def test_fcos_check_stays_torch_free_with_the_params_check():
    demo = TINY_CONFIG.parents[2] / "configs" / "fcos_b0_demo.yaml"
    code = (
        "import sys\nfrom fcos_core.cli.main import main\n"
        f"rc = main(['check', {str(demo)!r}, {TYPO!r}])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["2", "False"], out.stdout + out.stderr
    assert "did you mean 'weight'?" in out.stderr


def test_fcos_run_checks_later_stages_optimizers_before_training(host, tmp_path, capsys):
    from fcos_core.cli.main import main

    ckpt, run_dir = tmp_path / "ckpt", tmp_path / "run"
    # 'conv9.weight' ends in weight (fcos check cannot judge it); the model has no conv9
    argv = [
        "run",
        str(TINY_CONFIG),
        f"ckpt_dir={ckpt}",
        "--run-dir",
        str(run_dir),
        "qat_trainer.optimizer.params={conv9.weight: {weight_decay: 0.0}}",
    ]
    assert main(argv, host=host) == 2
    err = capsys.readouterr().err
    assert "qat_trainer.optimizer" in err and "'conv9.weight' select no parameter" in err
    assert "body.conv1.weight" in err  # the names it could have meant
    assert not run_dir.exists() and not ckpt.exists()  # refused before the float stage


def test_fcos_run_skips_the_check_for_stages_it_does_not_run(host, tmp_path):
    from fcos_core.config import load_config
    from fcos_core.engine.stage_checks import check_stage_optimizers

    cfg = load_config(
        TINY_CONFIG,
        host,
        [f"ckpt_dir={tmp_path}", "qat_trainer.optimizer.params={conv9.weight: {}}"],
    )
    check_stage_optimizers(cfg, ["float"])
    with pytest.raises(FcosUserError, match=r"qat_trainer.optimizer"):
        check_stage_optimizers(cfg, ["float", "qat"])


# --- huge pages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,env,expected",
    [
        (None, {}, (True, "default")),
        (False, {}, (False, "--no-thp")),
        (True, {"FCOS_THP": "0"}, (True, "--thp")),
        (None, {"FCOS_THP": "off"}, (False, "FCOS_THP")),
        (None, {"THP_MEM_ALLOC_ENABLE": "0"}, (False, "THP_MEM_ALLOC_ENABLE")),
        (None, {"FCOS_THP": "1", "THP_MEM_ALLOC_ENABLE": "0"}, (True, "FCOS_THP")),
    ],
)
def test_thp_setting_precedence(flag, env, expected):
    assert hugepages.resolve(flag, env) == expected


def test_thp_env_override_must_be_a_switch():
    with pytest.raises(FcosUserError, match="FCOS_THP='maybe'"):
        hugepages.resolve(None, {"FCOS_THP": "maybe"})


def test_thp_flag_is_passed_to_torchrun_children():
    args = argparse.Namespace(
        config="c.yaml",
        overrides=[],
        stage=None,
        run_dir=None,
        resume=False,
        overwrite=False,
        thp=False,
    )
    assert child_argv(args)[-1] == "--no-thp"
    args.thp = None
    assert "--thp" not in child_argv(args) and "--no-thp" not in child_argv(args)


_PROBE = """
import os, subprocess, sys
from fcos_core.engine import hugepages
state = hugepages.setup({flag})
import torch
big = torch.empty(8 << 20, dtype=torch.uint8)
child = subprocess.run([sys.executable, "-c",
                        "import os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"],
                       capture_output=True, text=True).stdout.strip()
print(state["thp"], state["applied"], big.data_ptr() % 4096 == 0,
      os.environ.get("THP_MEM_ALLOC_ENABLE"), child)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch uses THP on Linux only")
@pytest.mark.parametrize("flag,on", [(None, True), (False, False)])
def test_thp_applies_to_this_process_and_is_not_exported(flag, on):
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "FCOS_THP")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(flag=flag)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    thp, applied, aligned, here, child = out.stdout.split()
    assert thp == str(on) and applied == "True"
    # with huge pages torch aligns large blocks to pages; glibc's malloc does not
    assert aligned == str(on)
    assert here == "None" and child == "None"  # neither this process's env nor a child's


def test_thp_setting_is_logged_and_not_left_in_the_environment(host, tmp_path, monkeypatch):
    import json

    from fcos_core.cli.main import main

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delenv("FCOS_THP", raising=False)
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(TINY_CONFIG),
                f"ckpt_dir={tmp_path / 'ckpt'}",
                "--stage",
                "float",
                "--run-dir",
                str(run_dir),
                "float_trainer.num_epochs=1",
                "float_predictor=null",
            ],
            host=host,
        )
        == 0
    )
    # was os.environ.setdefault(...): inherited by every program the run started
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    thp = [e for e in events if e["event"] == "huge_pages"]
    assert thp and thp[0]["thp"] == "on" and thp[0]["source"] == "default"
