"""A run killed with SIGKILL at a random step resumes to exactly the uninterrupted weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import HERE, TINY_CONFIG

from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.pipeline import run_pipeline

STEPS = 12  # 3 epochs x 4 steps


def _overrides(ckpt_dir):
    return [
        f"ckpt_dir={ckpt_dir}",
        "float_trainer.num_epochs=3",
        "float_predictor=null",
        "vars.model.dropout=0.2",
        "vars.data_loader.dataset.delay=0.01",
        "vars.ckpt_callback.save_interval_steps=1",
    ]


def _steps_logged(log_path):
    if not log_path.is_file():
        return 0
    return sum(
        1
        for line in log_path.read_text().splitlines()
        if line.strip().endswith("}") and json.loads(line).get("event") == "train"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_then_resume_is_exact(tiny_cfg, host, tmp_path):
    # uninterrupted reference, in this process
    run_pipeline(
        tiny_cfg(*_overrides(tmp_path / "ref")), host, ["float"], run_dir=str(tmp_path / "ref_run")
    )
    ref = load_file(tmp_path / "ref" / "float-checkpoint-last.pth.tar")

    kill_after = random.Random(os.getpid()).randint(2, STEPS - 2)
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "OMP_NUM_THREADS": "1",
        "FCOS_PROGRESS": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "engine_fcos_main",
        "run",
        str(TINY_CONFIG),
        *_overrides(tmp_path / "ckpt"),
        "--stage",
        "float",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _steps_logged(run_dir / "log.jsonl") < kill_after:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    assert not killed["finished"] and killed["global_step"] >= kill_after - 1

    run_pipeline(
        tiny_cfg(*_overrides(tmp_path / "ckpt")), host, ["float"], run_dir=str(run_dir), resume=True
    )
    got = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    assert got["finished"] and got["global_step"] == ref["global_step"] == STEPS
    for key in ("train_state_dict", "state_dict", "optimizer"):
        want, have = ref[key], got[key]
        if key == "optimizer":
            want, have = want["state"], have["state"]
            want = {k: v["momentum_buffer"] for k, v in want.items()}
            have = {k: v["momentum_buffer"] for k, v in have.items()}
        assert want.keys() == have.keys()
        for name in want:
            assert torch.equal(want[name], have[name]), (key, name, kill_after)
    log = (run_dir / "log.jsonl").read_text()
    assert '"event": "resumed"' in log
