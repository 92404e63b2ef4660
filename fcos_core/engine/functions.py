"""Named functions a config refers to by name (``loss_collector``, ``metric_update_func``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def collect_losses(outputs: Any) -> list[Any]:
    """The loss tensors of a training model's output dict, in the dict's order.

    A nested dict or list is flattened; non-tensor values (counts, logging extras) are skipped.
    """
    import torch

    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(outputs)
    return found


def update_loss(metrics: Iterable[Any], batch: Any, outputs: Any) -> None:
    """Feed a training step's loss dict to the loop's metrics (``LossShow``)."""
    for metric in metrics:
        metric.update(batch, outputs)


def update_metric(metrics: Iterable[Any], batch: Any, outputs: Any) -> None:
    """Feed an evaluation step's detections (and the batch's ground truth) to the metrics."""
    for metric in metrics:
        metric.update(batch, outputs)
