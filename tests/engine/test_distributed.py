"""Two-process gloo DDP (launched through torchrun's machinery) equals one process with the
same global batch: parameters, EMA and synchronised BatchNorm statistics."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import pytest
import torch
from conftest import HERE, TINY_CONFIG

from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.launch import launch_with_torchrun, torchrun_argv
from fcos_core.engine.pipeline import run_pipeline


def _overrides(tmp_path, sub, batch):
    return [
        f"ckpt_dir={tmp_path / sub / 'ckpt'}",
        f"vars.batch_size={batch}",
        "float_predictor=null",
        "deterministic=false",
    ]


def test_torchrun_argv():
    args = argparse.Namespace(
        config="c.yaml",
        overrides=["a=1"],
        stage="float",
        run_dir="r",
        resume=True,
        nproc_per_node=2,
        debug=False,
    )
    argv = torchrun_argv(args)
    overwrite = argparse.Namespace(**{**vars(args), "resume": False, "overwrite": True})
    assert torchrun_argv(overwrite)[-1] == "--overwrite"
    assert argv[:3] == ["--nproc-per-node", "2", "--standalone"]
    assert argv[3:] == [
        "-m",
        "fcos_core",
        "run",
        "c.yaml",
        "a=1",
        "--stage",
        "float",
        "--run-dir",
        "r",
        "--resume",
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_ddp_equals_one_process(tiny_cfg, host, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), *sys.path]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("FCOS_PROGRESS", "0")
    args = argparse.Namespace(
        config=str(TINY_CONFIG),
        overrides=_overrides(tmp_path, "ddp", 2),
        stage="float",
        run_dir=str(tmp_path / "ddp" / "run"),
        resume=False,
        nproc_per_node=2,
        debug=True,
    )
    sigint = signal.getsignal(signal.SIGINT)
    assert launch_with_torchrun(args, entry_module="engine_fcos_main") == 0
    assert signal.getsignal(signal.SIGINT) is sigint  # torchrun's agent handler is not left
    # the same run again would replace those checkpoints: rank 0 checks, every rank stops with
    # exit code 2 (none waits for the others forever), the checkpoint is untouched
    last = tmp_path / "ddp" / "ckpt" / "float-checkpoint-last.pth.tar"
    saved = last.read_bytes()
    assert launch_with_torchrun(args, entry_module="engine_fcos_main") == 2
    assert last.read_bytes() == saved

    cfg = tiny_cfg(*_overrides(tmp_path, "one", 4))
    run_pipeline(cfg, host, ["float"], run_dir=str(tmp_path / "one" / "run"))

    ddp = load_file(tmp_path / "ddp" / "ckpt" / "float-checkpoint-last.pth.tar")
    one = load_file(tmp_path / "one" / "ckpt" / "float-checkpoint-last.pth.tar")
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["global_step"] == one["global_step"] == 8
    for key in ("train_state_dict", "state_dict"):  # raw weights and the EMA
        for name, want in one[key].items():
            got = ddp[key][name]
            if want.is_floating_point():
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
            else:
                assert torch.equal(got, want), name
    # synchronised BatchNorm: running statistics cover the global batch
    stats = [k for k in one["train_state_dict"] if "running_" in k]
    assert len(stats) == 4
    log = (tmp_path / "ddp" / "run" / "log.jsonl").read_text()
    assert '"world_size": 2' in log and "sync_bn" in log
