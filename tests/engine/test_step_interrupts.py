"""Ctrl-C/SIGTERM wait for the running training step (fcos_core.engine.step_interrupts)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from engine_helpers import assert_same_trained_weights, ctx_for, tiny_trainer
from engine_standins import TinySet

from fcos_core.engine.callbacks.base import Callback
from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.callbacks.ema import ExponentialMovingAverage
from fcos_core.engine.checkpoint_io import load_file
from fcos_core.engine.run_guard import Terminated, sigterm_as_interrupt
from fcos_core.engine.step_interrupts import step_interrupts_deferred


@pytest.fixture(autouse=True)
def _python_default_handlers():
    """Python's own SIGINT/SIGTERM handling for each test, whatever an earlier test in the
    session installed (torch.distributed's launcher leaves its own SIGINT handler behind)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def _kill(signum):
    os.kill(os.getpid(), signum)


def test_sigint_is_delivered_after_the_block_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ran = []
    with pytest.raises(KeyboardInterrupt), step_interrupts_deferred():  # noqa: PT012
        _kill(signal.SIGINT)
        ran.append("after the signal")  # still part of the step
    assert ran == ["after the signal"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_reaches_the_run_guard_handler_after_the_block():
    ran = []
    with pytest.raises(Terminated), sigterm_as_interrupt():  # noqa: PT012
        with step_interrupts_deferred():
            _kill(signal.SIGTERM)
            ran.append("after the signal")
        ran.append("not reached")
    assert ran == ["after the signal"]


def test_a_second_signal_is_delivered_at_once():
    ran = []
    with pytest.raises(KeyboardInterrupt), step_interrupts_deferred():  # noqa: PT012
        _kill(signal.SIGINT)
        ran.append("first held")
        _kill(signal.SIGINT)
        ran.append("not reached")
    assert ran == ["first held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_effect_and_an_exception_wins():
    with step_interrupts_deferred():
        pass
    with pytest.raises(ValueError, match="boom"), step_interrupts_deferred():  # noqa: PT012
        _kill(signal.SIGINT)
        raise ValueError("boom")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_it_changes_nothing():
    seen = []

    def worker():
        with step_interrupts_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


class _SignalInStepEnd(Callback):
    """Sends SIGINT to the process inside ``on_step_end`` of one step, i.e. after the optimizer
    changed the weights and before the step is complete: listed first, it runs before the EMA
    callback's update."""

    def __init__(self, step, times=1):
        self.step, self.times = step, times

    def on_step_end(self, loop, batch, outputs):
        if loop.state.global_step == self.step:
            for _ in range(self.times):
                _kill(signal.SIGINT)


def _callbacks(tmp):
    return [ExponentialMovingAverage(decay=0.9, ramp_steps=2.0), Checkpoint(save_dir=str(tmp))]


def test_ctrl_c_mid_step_saves_that_step_and_resume_is_exact(tmp_path):
    data = TinySet(n=12, size=16)
    ref = tiny_trainer(tmp_path / "a", callbacks=_callbacks(tmp_path / "a"), dataset=data)
    ref.run(ctx_for(tmp_path / "a"))

    b = tmp_path / "b"
    first = tiny_trainer(b, callbacks=[*_callbacks(b), _SignalInStepEnd(5)], dataset=data)
    with pytest.raises(KeyboardInterrupt):
        first.run(ctx_for(b))
    saved = load_file(b / "float-checkpoint-last.pth.tar")
    # the interrupted step completed (EMA included) and is the one saved
    assert (saved["epoch"], saved["batch_in_epoch"], saved["global_step"]) == (1, 2, 5)

    second = tiny_trainer(b, callbacks=_callbacks(b), seed=99, dataset=data)
    second.run(ctx_for(b, resume=True))
    assert_same_trained_weights(second, ref)


def test_a_second_ctrl_c_mid_step_keeps_the_previous_checkpoint(tmp_path):
    trainer = tiny_trainer(
        tmp_path,
        callbacks=[_SignalInStepEnd(5, times=2), *_callbacks(tmp_path)],
        dataset=TinySet(n=12, size=16),
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.run(ctx_for(tmp_path))
    saved = load_file(tmp_path / "float-checkpoint-last.pth.tar")
    assert saved["global_step"] == 3  # end of epoch 1: step 5 was cut short
