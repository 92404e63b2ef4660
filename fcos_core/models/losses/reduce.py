"""Shared argument checks and the weighted reduction every loss applies."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of torch's three."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def weight_reduce(
    loss: Tensor,
    weight: Tensor | None,
    reduction: str,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """Apply an element weight, then reduce.

    Args:
        loss: elementwise loss, any shape ``[*]``.
        weight: broadcastable to ``loss`` (a per-row ``[N]`` weight of an ``[N, C]`` loss is
            expanded on the right), or None.
        reduction: ``"none"`` returns the weighted elementwise loss; ``"sum"`` its sum;
            ``"mean"`` its mean, or ``sum / avg_factor`` when ``avg_factor`` is given (mmdet's
            convention: the normaliser is e.g. the number of positives, not the element count).
        avg_factor: normaliser for ``"mean"``; must be None for ``"sum"``.

    Returns:
        ``loss`` reduced as asked (a 0-d tensor unless ``reduction == "none"``).
    """
    if weight is not None:
        while weight.dim() < loss.dim():
            weight = weight.unsqueeze(-1)
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError("avg_factor only applies to reduction='mean'")
        return loss.sum()
    if avg_factor is None:
        # an empty mean is 0 (with a graph) instead of NaN, so "no positives" trains on
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    return loss.sum() / avg_factor


def check_weight(weight: float, name: str = "loss_weight") -> None:
    """Loss weights are finite and non-negative."""
    if not (weight >= 0.0) or weight == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {weight}")
