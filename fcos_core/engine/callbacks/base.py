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
the step, the validation metric of the epoch). Evaluation loops (``Predictor``, and ``Validation``'s inner
loop) fire the same events with a single "epoch" covering all their data loaders.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Callback:
    """Base class of trainer callbacks; every hook does nothing by default."""

    #: run after the other callbacks at each event (checkpoints)
    run_last: bool = False

    def on_loop_begin(self, loop: Any) -> None:
        """Before the first epoch (models are converted and on their device)."""

    def on_epoch_begin(self, loop: Any) -> None:
        """Before the first batch of an epoch."""

    def on_step_begin(self, loop: Any) -> None:
        """Before a batch is processed."""

    def on_step_end(self, loop: Any, batch: Any, outputs: Any) -> None:
        """After a batch is processed (the optimizer has stepped when training)."""

    def on_epoch_end(self, loop: Any) -> None:
        """After the last batch of an epoch."""

    def on_loop_end(self, loop: Any) -> None:
        """After the last epoch (also when there are no epochs: ``num_epochs: 0``)."""

    def on_interrupt(self, loop: Any) -> None:
        """On Ctrl-C (KeyboardInterrupt), before the loop exits."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


def run_order(callbacks: Iterable[Any]) -> list[Any]:
    """Callbacks in the order events reach them: config order, ``run_last`` ones at the end."""
    callbacks = list(callbacks)
    return ([c for c in callbacks if not getattr(c, "run_last", False)]
            + [c for c in callbacks if getattr(c, "run_last", False)])


def callback_key(index: int, callback: Any) -> str:
    """Key of a callback's state in a checkpoint: its position and class name."""
    return f"{index}:{type(callback).__name__}"
