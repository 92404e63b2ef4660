"""Errors the training engine raises for conditions the user has to act on."""

from __future__ import annotations

from fcos_core.errors import FcosUserError


class NonFiniteLossError(FcosUserError):
    """A loss term became NaN or infinite: training stops, the last good checkpoint stays.

    Like every :class:`FcosUserError`, ``fcos run`` reports it without a traceback and exits
    with code 2.
    """

    def __init__(self, stage: str, epoch: int, step: int, term: str, value: float) -> None:
        self.stage = stage
        self.epoch = epoch
        self.step = step
        self.term = term
        self.value = value
        super().__init__(
            f"stage {stage}: loss term {term!r} is {value} at step {step} (epoch {epoch + 1}); "
            "training stopped before this step changed the weights, and the last saved "
            "checkpoint was kept",
            hint="lower the learning rate or add warm-up (CosLrUpdater warmup_len), enable "
                 "gradient clipping (MultiBatchProcessor grad_clip_max_norm), check the data "
                 "for empty/degenerate boxes; continue from the last checkpoint with --resume",
        )
