"""Argument schema of ``EarlyStopping`` (torch-free: ``fcos check`` imports it)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class EarlyStoppingArgs:
    """Ends training when the monitored validation metric stops improving.

    After each validation, an improvement is a value better than the best so far by more than
    ``min_delta``; after ``patience`` validations in a row without one, training ends at that
    epoch as if it were the last (checkpoints marked finished, the end-of-training validation
    and reports as usual). Pair it with a ``Checkpoint`` that monitors the same key and mode:
    its ``best`` checkpoint, the one the next stage loads, is then the best epoch, not the last.
    Goes to summary.json as the stage's ``early_stopping``."""

    monitor: str = arg(
        "mAP",
        help="validation result to watch (a key of the trainer's "
        "val_metrics results, e.g. mAP, AP50)",
    )
    mode: Literal["max", "min"] = arg("max", help="whether a larger or a smaller value is better")
    patience: int = arg(3, help="validations without improvement before training stops (>= 1)")
    min_delta: float = arg(
        0.0,
        help="an improvement must beat the best by more than this (>= 0, in the metric's units)",
    )
