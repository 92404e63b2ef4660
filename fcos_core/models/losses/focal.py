"""Sigmoid focal loss (Lin et al., RetinaNet) with a background label, as HAT/mmdet use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcos_core.models.losses.reduce import check_reduction, check_weight, weight_reduce


def sigmoid_focal(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise sigmoid focal loss.

    The same arithmetic as ``torchvision.ops.sigmoid_focal_loss`` (so values and gradients
    agree), written out because the detector also needs the unreduced, weighted form.

    Args:
        logits: ``[*]`` class logits.
        targets: ``[*]`` targets in [0, 1] (one-hot or soft).
        alpha: weight of the positive term in [0, 1]; negative (-1) disables weighting.
        gamma: focusing exponent.

    Returns:
        ``[*]`` loss per element.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class FocalLoss(nn.Module):
    """Sigmoid focal loss over ``num_classes - 1`` class channels plus a background label.

    ``num_classes`` counts the background: with 81, the prediction has 80 channels and label 80
    (``num_classes - 1``) is background, i.e. an all-zero one-hot target.

    Args:
        num_classes: classes including background (>= 2).
        alpha: positive weight in [0, 1], or -1 for none.
        gamma: focusing exponent >= 0.
        loss_weight: multiplier of the result.
        reduction: ``"none" | "mean" | "sum"``.
        loss_name: key of this loss in the detector's loss dict.
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.25,
        gamma: float = 2.0,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        loss_name: str = "cls",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got "
                f"{num_classes} (use 81 for 80 classes)"
            )
        if not (0.0 <= alpha <= 1.0) and alpha != -1:
            raise ValueError(f"alpha must be in [0, 1] or -1 (off), got {alpha}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        check_weight(loss_weight)
        check_reduction(reduction)
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.loss_name = loss_name

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            pred: ``[N, C]`` logits (``C = num_classes - 1``), or any shape ``[*]`` when
                ``target`` is a float tensor of the same shape.
            target: ``[N]`` int64 labels in ``0..num_classes-1`` (``num_classes - 1`` is
                background; negative labels are treated as background), or a float ``[*]``
                target like ``pred``.
            weight: optional per-element ``[*]`` or per-row ``[N]`` weight.
            avg_factor: optional normaliser for ``mean`` (e.g. the number of positives).

        Returns:
            the loss, reduced per ``reduction``, times ``loss_weight``.
        """
        if not target.is_floating_point():
            if pred.shape[-1] != self.num_classes - 1:
                raise ValueError(
                    f"pred has {pred.shape[-1]} class channels but num_classes="
                    f"{self.num_classes} (classes + background) needs "
                    f"{self.num_classes - 1}"
                )
            # one-hot over all labels, then drop the background column; a negative label
            # (ignore) counts as background here: give it weight 0 to leave it out
            target = torch.where(target < 0, self.num_classes - 1, target)
            target = F.one_hot(target, self.num_classes)[..., :-1].to(pred.dtype)
        elif target.shape != pred.shape:
            raise ValueError(
                f"float target shape {tuple(target.shape)} must equal pred shape "
                f"{tuple(pred.shape)}"
            )
        loss = sigmoid_focal(pred, target, self.alpha, self.gamma)
        return self.loss_weight * weight_reduce(loss, weight, self.reduction, avg_factor)
