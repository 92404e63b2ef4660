"""The callback interface and the order callbacks run in.

Events, in the order a training loop fires them::

    on_loop_begin
      (--resume: the checkpoint is restored here, after on_loop_begin, so that callbacks
       which create state at loop begin -- the EMA copy -- get it overwritten by the saved one)
      for each epoch:
        on_epoch_begin                  (also when a resumed run re-enters an epoch midway)
          for each batch:
            on_step_begin
            (batch processor: forward, loss check, backward, optimizer step)
            on_step_end(batch, outputs)
        on_epoch_end
    on_loop_end
    on_interrupt                        (instead of the rest, on Ctrl-C)

At every event the callbacks run in the order the config lists them, with one exception:
callbacks whose class sets ``run_last = True`` (``Checkpoint``, ``EarlyStopping``) run after all
the others, so a checkpoint always captures what the others did at that event (the EMA update of
the step, the validation metric of the epoch). Evaluation loops (``Predictor``, and
``Validation``'s inner loop) fire the same events with a single "epoch" covering all their data
loaders.

Callbacks are typed against :class:`LoopView`, what they may use of the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch-free at run time: registration imports the callbacks' schemas only
    import torch

    from fcos_core.engine.context import RunContext
    from fcos_core.engine.loop import LoopState


class EventLogger(Protocol):
    """The structlog logger of a loop: an event name and key-value facts."""

    def debug(self, event: str, *args: Any, **facts: Any) -> Any: ...
    def info(self, event: str, *args: Any, **facts: Any) -> Any: ...
    def warning(self, event: str, *args: Any, **facts: Any) -> Any: ...
    def error(self, event: str, *args: Any, **facts: Any) -> Any: ...


class LoopView(Protocol):
    """What a callback may use of the loop that fires its events (a :class:`Trainer`,
    :class:`Calibrator`, :class:`Predictor` or ``Validation``'s inner loop all satisfy it;
    mypy checks :class:`fcos_core.engine.loop.Loop` against it).

    Callbacks run after the loop has prepared its model, so ``ctx`` and ``device`` are set.
    Everything is read-only for a callback except the fields of ``state`` and ``ema_model``
    (the EMA callback's copy, which ``eval_model`` then returns).
    """

    #: the copy of the weights that evaluation and checkpoints use (EMA); None without one
    ema_model: torch.nn.Module | None

    @property
    def is_training(self) -> bool:
        """True for trainers (the optimizer steps), False for evaluation loops."""

    @property
    def state(self) -> LoopState:
        """Position (epoch, step), last losses, learning rate, validation results."""

    @property
    def ctx(self) -> RunContext:
        """The run this stage is part of (rank, run folder, recorder, summary extras)."""

    @property
    def stage(self) -> str:
        """The stage's name (``float``, ``calibration``, ``qat``, ``int_infer`` ...)."""

    @property
    def logger(self) -> EventLogger: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained or evaluated (converted, on ``device``)."""

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and save: ``ema_model`` when set, else ``model``."""

    @property
    def optimizer(self) -> torch.optim.Optimizer | None: ...

    @property
    def metrics(self) -> list[Any]:
        """The loop's metrics (``train_metrics`` of a trainer, ``metrics`` of a predictor)."""

    @property
    def val_metrics(self) -> list[Any]: ...

    def checkpoint_dict(
        self, *, epoch_done: bool = False, interrupted: bool = False, metric: float | None = None
    ) -> dict[str, Any]:
        """The checkpoint of the current position (see :mod:`fcos_core.engine.loop`)."""


class Callback:
    """Base class of trainer callbacks; every hook does nothing by default."""

    #: run after the other callbacks at each event (checkpoints)
    run_last: bool = False

    def on_loop_begin(self, loop: LoopView) -> None:
        """Before the first epoch (models are converted and on their device)."""

    def on_epoch_begin(self, loop: LoopView) -> None:
        """Before the first batch of an epoch."""

    def on_step_begin(self, loop: LoopView) -> None:
        """Before a batch is processed."""

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        """After a batch is processed (the optimizer has stepped when training)."""

    def on_epoch_end(self, loop: LoopView) -> None:
        """After the last batch of an epoch."""

    def on_loop_end(self, loop: LoopView) -> None:
        """After the last epoch (also when there are no epochs: ``num_epochs: 0``)."""

    def on_interrupt(self, loop: LoopView) -> None:
        """On Ctrl-C (KeyboardInterrupt), before the loop exits."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


def run_order(callbacks: Iterable[Any]) -> list[Any]:
    """Callbacks in the order events reach them: config order, ``run_last`` ones at the end."""
    callbacks = list(callbacks)
    return [c for c in callbacks if not getattr(c, "run_last", False)] + [
        c for c in callbacks if getattr(c, "run_last", False)
    ]


def callback_key(index: int, callback: Any) -> str:
    """Key of a callback's state in a checkpoint: its position and class name."""
    return f"{index}:{type(callback).__name__}"
