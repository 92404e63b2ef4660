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


class PeerLostError(FcosUserError):
    """Another process of a distributed run stopped or stopped answering.

    Raised on the surviving processes instead of torch's low-level error (gloo's "Connection
    closed by peer", a collective timing out after the process group's timeout, NCCL's
    errors), so every machine ends with one line saying what happened and how to continue.
    ``fcos run`` exits with code 2.
    """

    def __init__(
        self, rank: int, world_size: int, backend: str, timeout_s: float, cause: str
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.timeout_s = timeout_s
        first = next((line.strip() for line in cause.splitlines() if line.strip()), "")
        super().__init__(
            f"distributed run: another process stopped or stopped answering (seen by rank "
            f"{rank} of {world_size}, backend {backend}): {first[:300]}; this process stopped "
            "too",
            hint="the cause is in the output of the process that stopped first (another "
            "machine's log); continue every node from the last checkpoint with --resume "
            f"(a silent peer is waited for dist_timeout_s = {timeout_s:g} s; set "
            "dist_timeout_s=SECONDS in the config or on the command line to change it)",
        )
