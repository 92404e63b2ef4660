"""What a model converter may need besides the model itself."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class ConvertContext:
    """Handed to every converter: ``converter(model, ctx) -> model``.

    Attributes:
        example_inputs: input name -> shape (the config's ``deploy_inputs``), used to export
            the quantizable part of the model (torch.export needs example inputs).
        backend: the compile backend named by the config's ``march`` (its quantization rules
            decide dtypes and shared scales), or None for fcos's default rules.
        device: torch device string the model runs on.
        stage: the stage being run (``float``, ``calibration``, ``qat``, ``int_infer``).
        logger: a structlog-style logger (``.info(event, **kv)``).
    """

    example_inputs: dict[str, tuple[int, ...]] = attrs.field(
        factory=lambda: {"img": (1, 3, 512, 512)}
    )
    backend: Any = None
    device: str = "cpu"
    stage: str | None = None
    logger: Any = None
