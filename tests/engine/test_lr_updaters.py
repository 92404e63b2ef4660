"""LR schedules against torch's schedulers and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fcos_core.engine.callbacks.lr_updaters import CosLrUpdater, StepDecayLrUpdater


class _Loop:
    """Just enough of a loop for an LR callback."""

    def __init__(self, optimizer, num_epochs, steps_per_epoch):
        from fcos_core.engine.loop import LoopState
        from fcos_core.logging_setup import get_logger

        self.optimizer = optimizer
        self.state = LoopState(num_epochs=num_epochs, steps_per_epoch=steps_per_epoch)
        self.logger = get_logger("test")
        self.stage = "test"


def _lrs(cb, num_epochs, spe, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    loop = _Loop(opt, num_epochs, spe)
    cb.on_loop_begin(loop)
    out = []
    for step in range(num_epochs * spe):
        loop.state.epoch, loop.state.global_step = divmod(step, spe)[0], step
        cb.on_step_begin(loop)
        out.append(opt.param_groups[0]["lr"])
    return out


def _torch_lrs(make, total, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_step_warmup_matches_torch():
    epochs, spe, warm, start, m = 4, 5, 6, 0.2, 0.05
    ours = _lrs(
        CosLrUpdater(warmup_len=warm, warmup_by="step", warmup_start_ratio=start, min_lr_ratio=m),
        epochs,
        spe,
    )
    total = epochs * spe
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=start, total_iters=warm),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warm, eta_min=0.1 * m),
            ],
            milestones=[warm],
        ),
        total,
    )
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_cosine_with_epoch_warmup_hand_computed():
    epochs, spe = 4, 3
    ours = _lrs(CosLrUpdater(warmup_len=2, warmup_by="epoch", warmup_start_ratio=0.1), epochs, spe)
    expected = []
    for t in range(epochs * spe):
        e = t // spe
        if e < 2:
            expected.append(0.1 * (0.1 + 0.9 * e / 2))
        else:
            expected.append(0.1 * 0.5 * (1 + math.cos(math.pi * (t - 6) / 6)))
    assert ours == pytest.approx(expected, rel=1e-12)


def test_step_decay_matches_multisteplr():
    epochs, spe = 6, 2
    ours = _lrs(StepDecayLrUpdater(lr_decay_id=[2, 4], lr_decay_factor=0.3), epochs, spe)
    per_epoch = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 4], gamma=0.3), epochs
    )
    assert ours == pytest.approx([lr for lr in per_epoch for _ in range(spe)], rel=1e-12)


def test_groups_keep_their_ratio_and_bad_arguments():
    opt = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
            {"params": [torch.nn.Parameter(torch.zeros(1))]},
        ],
        lr=0.5,
    )
    loop = _Loop(opt, 2, 2)
    cb = StepDecayLrUpdater(lr_decay_id=[1])
    cb.on_loop_begin(loop)
    loop.state.epoch = 1
    cb.on_step_begin(loop)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])
    with pytest.raises(ValueError, match="warmup_by"):
        CosLrUpdater(warmup_by="iter")
    with pytest.raises(ValueError, match="lr_decay_factor"):
        StepDecayLrUpdater(lr_decay_id=[1], lr_decay_factor=0)


def test_min_warmup_steps_floors_a_short_epoch_warmup_like_torch():
    # one warm-up epoch of 2 steps is floored to a per-step ramp over 7 steps
    epochs, spe, floor, start = 10, 2, 7, 0.1
    ours = _lrs(
        CosLrUpdater(
            warmup_len=1, warmup_by="epoch", warmup_start_ratio=start, min_warmup_steps=floor
        ),
        epochs,
        spe,
    )
    total = epochs * spe
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=start, total_iters=floor),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - floor),
            ],
            milestones=[floor],
        ),
        total,
    )
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # a warm-up already longer than the floor is unchanged; the floor never exceeds half the run
    long = CosLrUpdater(warmup_len=2, warmup_by="epoch", min_warmup_steps=3)
    assert _lrs(long, 4, 3) == _lrs(CosLrUpdater(warmup_len=2, warmup_by="epoch"), 4, 3)
    capped = _lrs(CosLrUpdater(warmup_len=0, warmup_by="step", min_warmup_steps=1000), 2, 5)
    assert capped[:5] == pytest.approx([0.1 * (0.1 + 0.9 * t / 5) for t in range(5)])
    assert capped[5] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_warmup_steps"):
        CosLrUpdater(min_warmup_steps=-1)
