"""Nothing lost: a re-run does not replace trained checkpoints without --resume/--overwrite, two
runs cannot share a ckpt_dir, unwritable folders stop the run before training, SIGTERM saves."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import HERE, TINY_CONFIG

from fcos_core.cli.main import main
from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.pipeline import run_pipeline
from fcos_core.engine.run_guard import LOCK_NAME, RunLock, Terminated
from fcos_core.errors import FcosUserError

ONLY_FLOAT = (
    "calibration_trainer=null",
    "qat_trainer=null",
    "int_infer_trainer=null",
    "float_predictor=null",
    "float_trainer.num_epochs=1",
)


def _snapshot(*folders):
    return {
        p: p.read_bytes()
        for f in folders
        if f.is_dir()
        for p in sorted(f.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


@pytest.mark.slow
def test_rerun_refuses_to_replace_checkpoints_until_resume_or_overwrite(
    tiny_cfg, host, tmp_path, capsys
):
    cfg = tiny_cfg(*ONLY_FLOAT)
    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    run_pipeline(cfg, host, ["float"], run_dir=str(run))
    best, last = ckpt / "float-checkpoint-best.pth.tar", ckpt / "float-checkpoint-last.pth.tar"
    assert best.is_file() and last.is_file()
    before = _snapshot(run, ckpt)
    assert run / "config.resolved.yaml" in before and run / "metrics.csv" in before

    # the default --stage all would train float again: refused, nothing touched
    with pytest.raises(FcosUserError) as err:
        run_pipeline(
            cfg, host, ["float", "calibration", "qat", "int_infer", "compile"], run_dir=str(run)
        )
    msg = str(err.value)
    assert str(best) in msg and str(last) in msg
    assert "--resume" in err.value.hint and "--overwrite" in err.value.hint
    assert _snapshot(run, ckpt) == before

    # the CLI: exit code 2, the files and both flags named, still nothing touched
    argv = [
        "run",
        str(TINY_CONFIG),
        f"ckpt_dir={ckpt}",
        *ONLY_FLOAT,
        "--stage",
        "float",
        "--run-dir",
        str(run),
    ]
    capsys.readouterr()
    assert main(argv, host=host) == 2
    stderr = capsys.readouterr().err
    assert str(best) in stderr and "--resume" in stderr and "--overwrite" in stderr
    assert "Traceback" not in stderr
    assert main([*argv, "--resume", "--overwrite"], host=host) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert _snapshot(run, ckpt) == before

    # --resume: the finished stage is skipped, the checkpoints stay as they are
    run_pipeline(cfg, host, ["float"], run_dir=str(run), resume=True)
    assert best.read_bytes() == before[best] and last.read_bytes() == before[last]

    # --overwrite: trained again (2 steps instead of 4), the checkpoints replaced; the SIGTERM
    # handler the run installs is put back afterwards
    def sentinel(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, sentinel)
    try:
        run_pipeline(
            tiny_cfg(*ONLY_FLOAT, "vars.data_loader.dataset.n=8"),
            host,
            ["float"],
            run_dir=str(run),
            overwrite=True,
        )
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert load_file(last)["global_step"] == 2
    assert best.read_bytes() != before[best]
    assert (ckpt / LOCK_NAME).is_file()  # left for the next run; unlocked


def test_a_second_run_on_the_same_ckpt_dir_is_refused_and_a_dead_ones_lock_is_not(
    tiny_cfg, host, tmp_path
):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    code = (
        "import sys; from fcos_core.engine.run_guard import RunLock; "
        f"RunLock({str(ckpt)!r}).acquire(); print('locked', flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(FcosUserError) as err:
            run_pipeline(tiny_cfg(*ONLY_FLOAT), host, ["float"], run_dir=str(tmp_path / "run"))
        assert str(ckpt / LOCK_NAME) in str(err.value)
        assert f"process {other.pid}" in str(err.value)
        assert not (tmp_path / "run").exists()  # refused before anything was written
    finally:
        other.kill()  # SIGKILL: no clean-up; the lock file stays behind
        other.wait()
    assert (ckpt / LOCK_NAME).is_file()
    run_pipeline(tiny_cfg(*ONLY_FLOAT), host, ["float"], run_dir=str(tmp_path / "run"))
    assert (ckpt / "float-checkpoint-last.pth.tar").is_file()
    # the lock is released at the end of a run: this process can take it again
    RunLock(ckpt).acquire().release()


def test_unwritable_folders_stop_the_run_before_any_training(
    tiny_cfg, host, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"user data\n")
    run = tmp_path / "run"
    base = ["run", str(TINY_CONFIG), *ONLY_FLOAT, "--stage", "float"]
    # ckpt_dir below a regular file (root ignores chmod, so this is the unwritable folder)
    assert main([*base, f"ckpt_dir={blocker / 'ckpt'}", "--run-dir", str(run)], host=host) == 2
    err = capsys.readouterr().err
    assert str(blocker / "ckpt") in err and "Not a directory" in err and "ckpt_dir" in err
    assert "Traceback" not in err and not run.exists()
    # the run folder likewise
    ckpt = tmp_path / "ckpt"
    assert main([*base, f"ckpt_dir={ckpt}", "--run-dir", str(blocker / "run")], host=host) == 2
    err = capsys.readouterr().err
    assert str(blocker / "run") in err and "--run-dir" in err
    assert blocker.read_bytes() == b"user data\n"
    assert not list(ckpt.glob("*.pth.tar"))
    # a full disk: the probe's fsync fails
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main([*base, f"ckpt_dir={tmp_path / 'full'}", "--run-dir", str(run)], host=host) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "full") in err
    assert list((tmp_path / "full").iterdir()) == []  # the probe file was removed
    assert not run.exists()


def test_a_failing_checkpoint_write_names_the_file(tmp_path, monkeypatch):
    from engine_helpers import ctx_for, tiny_trainer

    from fcos_core.engine.callbacks import checkpoint as ckpt_mod

    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod, "atomic_save", full)
    trainer = tiny_trainer(
        tmp_path, num_epochs=1, callbacks=[ckpt_mod.Checkpoint(save_dir=str(tmp_path / "ckpt"))]
    )
    with pytest.raises(FcosUserError) as err:
        trainer.run(ctx_for(tmp_path))
    assert "float-checkpoint-last.pth.tar" in str(err.value)
    assert "No space left on device" in str(err.value)


# --- SIGTERM ----------------------------------------------------------------------------------

STEPS = 12  # 3 epochs x 4 steps


def _overrides(ckpt_dir):
    return [
        f"ckpt_dir={ckpt_dir}",
        "float_trainer.num_epochs=3",
        "float_predictor=null",
        "calibration_trainer=null",
        "qat_trainer=null",
        "int_infer_trainer=null",
        "vars.model.dropout=0.2",
        "vars.data_loader.dataset.delay=0.01",
        "vars.ckpt_callback.save_interval_steps=1000",
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
def test_sigterm_saves_last_and_resume_continues_exactly(tiny_cfg, host, tmp_path):
    run_pipeline(
        tiny_cfg(*_overrides(tmp_path / "ref")), host, ["float"], run_dir=str(tmp_path / "ref_run")
    )
    ref = load_file(tmp_path / "ref" / "float-checkpoint-last.pth.tar")

    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
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
        *_overrides(ckpt),
        "--stage",
        "float",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _steps_logged(run_dir / "log.jsonl") < 6:  # mid epoch 2; no step checkpoints
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    saved = load_file(ckpt / "float-checkpoint-last.pth.tar")
    assert not saved["finished"] and 6 <= saved["global_step"] < STEPS
    assert saved["batch_in_epoch"] == saved["global_step"] - 4 * saved["epoch"]
    log = (run_dir / "log.jsonl").read_text()
    assert "interrupted (SIGTERM)" in log and "saved a checkpoint" in log

    run_pipeline(tiny_cfg(*_overrides(ckpt)), host, ["float"], run_dir=str(run_dir), resume=True)
    got = load_file(ckpt / "float-checkpoint-last.pth.tar")
    assert got["finished"] and got["global_step"] == ref["global_step"] == STEPS
    for key in ("train_state_dict", "state_dict"):
        for name, want in ref[key].items():
            assert torch.equal(want, got[key][name]), (key, name)
    assert '"event": "resumed"' in (run_dir / "log.jsonl").read_text()


def test_sigterm_handler_raises_terminated_once_and_is_restored():
    from fcos_core.engine.run_guard import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    # the signal arrives during the sleep that follows the kill
    with pytest.raises(Terminated) as err, sigterm_as_interrupt():  # noqa: PT012
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert isinstance(err.value, KeyboardInterrupt) and err.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before
