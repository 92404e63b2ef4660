"""What a trainer needs to know about the run it is part of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from fcos_core.convert_context import ConvertContext
from fcos_core.engine.recorder import MetricsRecorder
from fcos_core.logging_setup import get_logger


def _example_inputs(value: Any) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(int(d) for d in v) for k, v in dict(value).items()}


@attrs.define
class RunContext:
    """One stage of a run, as handed to ``trainer.run(ctx)``.

    Attributes:
        stage: ``float``, ``calibration``, ``qat``, ``int_infer`` (or a test's own name).
        run_dir: the run folder (logs, metrics, summary); None in unit tests without one.
        ckpt_dir: default folder of checkpoints (the config's ``ckpt_dir``).
        device: device override for every trainer of the run (None: each trainer's own).
        logger: a structlog logger.
        seed: the run's seed (None: not seeded; data loaders then draw one and checkpoints
            keep it so a resume continues the same order).
        deterministic: deterministic algorithms were requested (exact resume).
        resume: continue from the stage's ``last`` checkpoint.
        config: the :class:`~fcos_core.config.ResolvedConfig` (None in unit tests).
        rank, world_size, local_rank: this process in a distributed run.
        example_inputs: input name -> shape (the config's ``deploy_inputs``).
        recorder: collects the numbers for ``metrics.csv`` and the plots.
        backend: the compile backend object (quantization rules), or None.
        channels_last: keep conv weights (and so activations) in channels-last memory
            format, measured 1.3-1.5x faster on CPU (the config's ``channels_last``).
        summary_extra: entries callbacks add to the stage's ``summary.json`` record (e.g.
            ``TrainingHealth``'s ``health_warnings``); JSON-able values.
    """

    stage: str
    run_dir: Path | None = attrs.field(default=None, converter=lambda p: Path(p) if p else None)
    ckpt_dir: Path = attrs.field(default=Path("tmp_models"), converter=Path)
    device: str | None = None
    logger: Any = attrs.field(factory=lambda: get_logger("fcos.engine"))
    seed: int | None = None
    deterministic: bool = False
    resume: bool = False
    config: Any = None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    example_inputs: dict[str, tuple[int, ...]] = attrs.field(
        factory=lambda: {"img": (1, 3, 512, 512)}, converter=_example_inputs
    )
    recorder: MetricsRecorder = attrs.field(default=None)
    backend: Any = None
    channels_last: bool = True
    summary_extra: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.recorder is None:
            self.recorder = MetricsRecorder(self.run_dir, enabled=self.rank == 0)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def convert_context(self, device: str) -> ConvertContext:
        """The :class:`ConvertContext` handed to converters of this stage."""
        return ConvertContext(
            example_inputs=dict(self.example_inputs),
            backend=self.backend,
            device=str(device),
            stage=self.stage,
            logger=self.logger,
        )
