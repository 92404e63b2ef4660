"""Argument schema of ``TimeLimit`` (torch-free: ``fcos check`` imports it)."""

from __future__ import annotations

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class TimeLimitArgs:
    """Ends training before a wall-clock budget runs out.

    After each epoch (its validation and checkpoints included), training ends there when the
    next epoch, as long as the mean epoch so far or the last one (whichever is longer), would
    end after ``max_minutes`` of training; the stage then finishes as after its last epoch
    (final validation, ``last`` marked finished). The clock starts when the training loop
    starts (model building and data loading before it are not counted) and a resumed run counts
    on from the time already spent. The learning-rate schedule is not shortened: size
    ``num_epochs`` to the budget for a full cosine decay, and let this callback be the
    guarantee. Goes to summary.json as the stage's ``time_limit``."""

    max_minutes: float = arg(help="training time budget in minutes (> 0)")
