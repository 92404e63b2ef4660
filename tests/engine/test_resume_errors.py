"""--resume after the model changed, and a damaged metrics.csv: exit 2 naming the cause and
the fix, never a traceback (issue 14, item 10)."""

from __future__ import annotations

import pytest
from conftest import TINY_CONFIG
from engine_helpers import ctx_for, tiny_trainer
from engine_standins import TinyDet, TinySet

from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.checkpoint_io import atomic_save, load_file
from fcos_core.engine.data_loader import DataLoader
from fcos_core.engine.optimizers import SGD
from fcos_core.engine.recorder import MetricsRecorder
from fcos_core.engine.trainer import Trainer
from fcos_core.errors import FcosUserError


def _trainer(tmp_path, channels: int, strict: bool = False) -> Trainer:
    return Trainer(
        model=TinyDet(channels=channels),
        num_epochs=1,
        data_loader=DataLoader(TinySet(n=8, size=16), batch_size=4),
        optimizer=lambda model: SGD(model, lr=0.05, momentum=0.9),
        device="cpu",
        callbacks=[Checkpoint(save_dir=str(tmp_path / "ckpt"), strict_match=strict)],
    )


@pytest.mark.parametrize("finished", [True, False])
def test_resume_with_other_model_shapes_names_the_tensors(tmp_path, finished):
    first = tiny_trainer(
        tmp_path, num_epochs=1, callbacks=[Checkpoint(save_dir=str(tmp_path / "ckpt"))]
    )
    first.run(ctx_for(tmp_path))
    last = tmp_path / "ckpt" / "float-checkpoint-last.pth.tar"
    if not finished:  # a run cut short: restore() loads the weights, not the finished path
        ckpt = load_file(last)
        ckpt.update(finished=False, epoch=0, batch_in_epoch=1, global_step=1)
        atomic_save(ckpt, last)
    with pytest.raises(FcosUserError) as err:  # was load_state_dict's RuntimeError
        _trainer(tmp_path, channels=6).run(ctx_for(tmp_path, resume=True))
    text = str(err.value)
    assert str(last) in text and "stage 'float'" in text
    assert "body.conv1.weight (checkpoint (4, 3, 3, 3), model (6, 3, 3, 3))" in text
    assert "restore the model" in text and "without --resume" in text


def test_strict_resume_names_missing_tensors(tmp_path):
    tiny_trainer(
        tmp_path, num_epochs=1, callbacks=[Checkpoint(save_dir=str(tmp_path / "ckpt"))]
    ).run(ctx_for(tmp_path))
    last = tmp_path / "ckpt" / "float-checkpoint-last.pth.tar"
    ckpt = load_file(last)
    ckpt["state_dict"].pop("body.cls.bias")
    ckpt["finished"] = False
    atomic_save(ckpt, last)
    with pytest.raises(FcosUserError, match=r"not in the checkpoint: body.cls.bias"):
        _trainer(tmp_path, channels=4, strict=True).run(ctx_for(tmp_path, resume=True))


def test_resume_with_other_optimizer_groups_is_a_user_error(tmp_path):
    tiny_trainer(
        tmp_path, num_epochs=1, callbacks=[Checkpoint(save_dir=str(tmp_path / "ckpt"))]
    ).run(ctx_for(tmp_path))
    last = tmp_path / "ckpt" / "float-checkpoint-last.pth.tar"
    ckpt = load_file(last)
    ckpt.update(finished=False, epoch=0, batch_in_epoch=1, global_step=1)
    atomic_save(ckpt, last)
    trainer = _trainer(tmp_path, channels=4)
    trainer._optimizer_spec = lambda model: SGD(
        model, lr=0.05, params={"bias": {"weight_decay": 0.0}}
    )
    with pytest.raises(FcosUserError, match=r"optimizer state .* does not fit"):
        trainer.run(ctx_for(tmp_path, resume=True))


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "kind,stage,epoch,step,loss\nstep,float,0,1,0.5\nstep,float,0,2,abc\n",
            r"line 3: column 'loss' holds 'abc', not a number",
        ),
        ("kind,stage,epoch,step,loss\nstep,float,0,1,0.5\xff\n", "not a readable metrics table"),
    ],
)
def test_damaged_metrics_csv_is_a_user_error(tmp_path, text, match):
    (tmp_path / "metrics.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(FcosUserError, match=match) as err:
        MetricsRecorder(tmp_path).load()
    assert "metrics.csv" in str(err.value) and "move the file away" in str(err.value)


def test_resume_cli_exits_2_on_a_damaged_metrics_csv_and_on_a_changed_model(host, tmp_path, capsys):
    from fcos_core.cli.main import main

    run_dir = tmp_path / "run"
    base = [
        "run",
        str(TINY_CONFIG),
        f"ckpt_dir={tmp_path / 'ckpt'}",
        "--stage",
        "float",
        "--run-dir",
        str(run_dir),
    ]
    assert main([*base, "float_trainer.num_epochs=1", "float_predictor=null"], host=host) == 0
    good = (run_dir / "metrics.csv").read_text()
    lines = good.splitlines()
    cols = lines[0].split(",")
    row = lines[1].split(",")
    row[cols.index("loss")] = "oops"
    (run_dir / "metrics.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]))
    capsys.readouterr()
    assert main([*base, "--resume"], host=host) == 2
    err = capsys.readouterr().err
    assert "metrics.csv, line 2: column 'loss' holds 'oops'" in err and "Traceback" not in err

    (run_dir / "metrics.csv").write_text(good)
    assert main([*base, "--resume", "vars.model.channels=6"], host=host) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "model (6, 3, 3, 3)" in err
    assert "Traceback" not in err
