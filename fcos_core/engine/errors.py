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


class NonFiniteGradientError(FcosUserError):
    """The gradient was NaN or infinite in ``max_nonfinite_steps`` consecutive steps.

    Those optimizer steps were skipped, so the weights are still finite; training stops without
    writing a checkpoint (the last saved one stays). ``fcos run`` exits with code 2.
    """

    def __init__(self, stage: str, epoch: int, step: int, consecutive: int, total: int) -> None:
        self.stage = stage
        self.epoch = epoch
        self.step = step
        self.consecutive = consecutive
        self.total = total
        super().__init__(
            f"stage {stage}: the gradient was NaN or infinite in {consecutive} consecutive steps "
            f"(the last at step {step}, epoch {epoch + 1}; {total} in this run); those optimizer "
            "steps were skipped, so the weights stayed finite, and training stopped without "
            "saving (the last saved checkpoint was kept)",
            hint="lower the learning rate or add warm-up (CosLrUpdater warmup_len), enable "
                 "gradient clipping (MultiBatchProcessor grad_clip_max_norm), check the data "
                 "for degenerate boxes; the trainer's max_nonfinite_steps sets how many skipped "
                 "steps in a row are tolerated; continue from the last checkpoint with --resume",
        )
