"""Argument schema of ``TrainingHealth`` (torch-free: ``fcos check`` imports it)."""

from __future__ import annotations

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class TrainingHealthArgs:
    """Warns once per loss term that stays at its starting value or jumps after warmup.

    The warnings name the likely causes and go to summary.json (``health_warnings``)."""

    plateau_tolerance: float = arg(
        0.05,
        help="a post-warmup epoch whose mean is within this fraction of the first epoch's "
        "mean counts as 'not learning' (the gap to the term's floor when one is "
        "logged, e.g. centerness - centerness_floor)",
    )
    plateau_epochs: int = arg(3, help="warn after this many such epochs in a row")
    jump_factor: float = arg(
        3.0,
        help="warn when a term's mean right after warmup reaches this multiple of its mean "
        "at the end of warmup",
    )
    window: int = arg(20, help="steps averaged at the end of warmup and right after it")
    warmup_steps: int | None = arg(
        None,
        help="length of the warmup in steps (null: where the lr updaters' schedule first "
        "peaks; 0 without an lr updater)",
    )
