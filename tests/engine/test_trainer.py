"""The training loop: NaN stop, Ctrl-C and exact resume, num_epochs 0, argument checks."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import assert_same_trained_weights, ctx_for, tiny_trainer, weights
from engine_standins import TinySet

from fcos_core.engine.callbacks.base import Callback, run_order
from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.callbacks.ema import ExponentialMovingAverage
from fcos_core.engine.callbacks.lr_updaters import CosLrUpdater
from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.errors import NonFiniteLossError


def _callbacks(tmp_path, **ckpt):
    return [
        ExponentialMovingAverage(decay=0.9, ramp_steps=2.0),
        CosLrUpdater(warmup_len=1),
        Checkpoint(save_dir=str(tmp_path / "ckpt"), **ckpt),
    ]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # the first item of epoch 0's third batch is NaN (the order is randperm seeded by 0 + 0)
    bad = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()[8]
    trainer = tiny_trainer(
        tmp_path,
        callbacks=_callbacks(tmp_path, save_interval_steps=1),
        dataset=TinySet(n=12, size=16, nan_index=bad),
        num_epochs=2,
    )
    with pytest.raises(NonFiniteLossError) as err:
        trainer.run(ctx_for(tmp_path))
    exc = err.value
    assert exc.term in ("cls", "reg") and exc.stage == "float"
    assert exc.step == 3 and "at step 3 (epoch 1)" in str(exc)
    last = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    assert last["global_step"] == exc.step - 1  # the step before the bad one
    for k, v in trainer.model.named_parameters():  # the NaN step never updated a parameter
        assert torch.equal(last["train_state_dict"][k], v.detach())
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


class _InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, loop):
        if loop.state.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_and_resume_is_exact(tmp_path):
    ref = tiny_trainer(
        tmp_path / "a",
        callbacks=_callbacks(tmp_path / "a"),
        num_epochs=3,
        dataset=TinySet(n=12, size=16),
    )
    ref.run(ctx_for(tmp_path / "a"))
    expected = weights(ref.model), weights(ref.ema_model)

    b = tmp_path / "b"
    first = tiny_trainer(
        b, callbacks=[*_callbacks(b), _InterruptAt(4)], num_epochs=3, dataset=TinySet(n=12, size=16)
    )
    with pytest.raises(KeyboardInterrupt):
        first.run(ctx_for(b))
    saved = load_file(b / "ckpt" / "float-checkpoint-last.pth.tar")
    assert (saved["epoch"], saved["batch_in_epoch"], saved["global_step"]) == (1, 1, 4)

    second = tiny_trainer(
        b, callbacks=_callbacks(b), num_epochs=3, seed=99, dataset=TinySet(n=12, size=16)
    )
    second.run(ctx_for(b, resume=True))
    for got, want in zip((weights(second.model), weights(second.ema_model)), expected):
        for k in want:
            assert torch.equal(got[k], want[k]), k
    # resuming a finished stage does nothing
    third = tiny_trainer(b, callbacks=_callbacks(b), num_epochs=3, dataset=TinySet(n=12, size=16))
    third.run(ctx_for(b, resume=True))
    assert third.state.finished and third.state.global_step == 0
    assert all(torch.equal(third.model.state_dict()[k], v) for k, v in expected[0].items())


def test_num_epochs_zero_only_runs_loop_events(tmp_path):
    events = []

    class Spy(Callback):
        def __getattribute__(self, name):
            if name.startswith("on_"):
                events.append(name)
            return object.__getattribute__(self, name)

    from engine_standins import TinyDet

    from fcos_core.engine.trainer import Trainer

    trainer = Trainer(
        model=TinyDet(4),
        num_epochs=0,
        device="cpu",
        callbacks=[Spy(), Checkpoint(save_dir=str(tmp_path / "ckpt"))],
    )
    trainer.run(ctx_for(tmp_path, stage="int_infer"))
    assert events == ["on_loop_begin", "on_loop_end"]
    assert (tmp_path / "ckpt" / "int_infer-checkpoint-best.pth.tar").is_file()


def test_argument_errors_and_callback_order(tmp_path):
    from engine_standins import TinyDet

    from fcos_core.engine.trainer import Trainer

    with pytest.raises(ValueError, match="needs a data_loader"):
        Trainer(model=TinyDet(4), num_epochs=1)
    with pytest.raises(ValueError, match="device"):
        Trainer(model=TinyDet(4), num_epochs=0, device="tpu:x")
    ckpt, a, b = Checkpoint(save_dir="x"), Callback(), Callback()
    assert run_order([ckpt, a, b]) == [a, b, ckpt]


def test_lr_base_batch_size_scales_the_lr_linearly(tmp_path):
    for batch, base, want in ((4, 8, 0.025), (4, 2, 0.1), (4, None, 0.05)):
        tr = tiny_trainer(
            tmp_path / f"b{batch}_{base}", batch_size=batch, lr=0.05, lr_base_batch_size=base
        )
        tr.setup(ctx_for(tmp_path / f"b{batch}_{base}"))
        assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx([want])
    with pytest.raises(ValueError, match="lr_base_batch_size"):
        tiny_trainer(tmp_path, lr_base_batch_size=0)


def test_min_total_steps_raises_the_epochs_of_a_small_data_set(tmp_path):
    # 8 items, batch 4: 2 steps an epoch; 1 epoch raised to 4 to reach 7 steps
    tr = tiny_trainer(tmp_path / "a", num_epochs=1, n=8, batch_size=4, min_total_steps=7)
    tr.run(ctx_for(tmp_path / "a"))
    assert tr.num_epochs == 4 and tr.state.global_step == 8
    # enough steps already: unchanged
    tr = tiny_trainer(tmp_path / "b", num_epochs=2, n=8, batch_size=4, min_total_steps=3)
    tr.run(ctx_for(tmp_path / "b"))
    assert tr.num_epochs == 2 and tr.state.global_step == 4
    with pytest.raises(ValueError, match="min_total_steps"):
        tiny_trainer(tmp_path, min_total_steps=0)


def test_resume_restores_a_callback_that_moved_in_the_list(tmp_path):
    """A callback added in front of the others between the interrupt and the resume shifts
    their positions; a class that is there once is still restored (by its class)."""
    data = TinySet(n=12, size=16)
    ref = tiny_trainer(tmp_path / "a", callbacks=_callbacks(tmp_path / "a"), dataset=data)
    ref.run(ctx_for(tmp_path / "a"))

    b = tmp_path / "b"
    first = tiny_trainer(b, callbacks=[_InterruptAt(4), *_callbacks(b)], dataset=data)
    with pytest.raises(KeyboardInterrupt):
        first.run(ctx_for(b))
    second = tiny_trainer(b, callbacks=_callbacks(b), seed=99, dataset=data)
    second.run(ctx_for(b, resume=True))
    assert_same_trained_weights(second, ref)
