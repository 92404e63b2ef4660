"""Generalised IoU (Rezatofighi et al.) on xyxy boxes, broadcasting, and its loss module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fcos_core.models.losses.reduce import check_reduction, check_weight, weight_reduce


def iou_and_giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU and generalised IoU of boxes that broadcast against each other.

    Same arithmetic as ``torchvision.ops.generalized_box_iou_loss`` (so gradients agree), but
    broadcasting: ``[B, 1, P, 4]`` against ``[B, G, 1, 4]`` gives every (box, point) pair,
    which the target assigner uses.

    Args:
        boxes1: ``[*, 4]`` xyxy boxes.
        boxes2: ``[*, 4]`` xyxy boxes, broadcastable with ``boxes1``.
        eps: added to the union and enclosing area.

    Returns:
        ``(iou, giou)``, each of the broadcast shape ``[*]``.
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xi1 = torch.max(x1, x1g)
    yi1 = torch.max(y1, y1g)
    xi2 = torch.min(x2, x2g)
    yi2 = torch.min(y2, y2g)
    # strict overlap only (as torchvision): touching boxes give no intersection gradient
    overlap = (yi2 > yi1) & (xi2 > xi1)
    inter = torch.where(overlap, (xi2 - xi1) * (yi2 - yi1), torch.zeros((), dtype=x1.dtype))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    giou = iou - (area_c - union) / (area_c + eps)
    return iou, giou


class GIoULoss(nn.Module):
    """``1 - GIoU`` of predicted and target xyxy boxes.

    Args:
        loss_name: key of this loss in the detector's loss dict.
        loss_weight: multiplier of the result.
        reduction: ``"none" | "mean" | "sum"``.
        eps: added to denominators (torchvision's 1e-7).
    """

    def __init__(
        self,
        loss_name: str = "reg",
        loss_weight: float = 1.0,
        reduction: str = "mean",
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        check_weight(loss_weight)
        check_reduction(reduction)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.loss_name = loss_name
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.eps = eps

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            pred: ``[*, 4]`` xyxy boxes.
            target: ``[*, 4]`` xyxy boxes, broadcastable with ``pred``.
            weight: optional ``[*]`` weight per box pair.
            avg_factor: optional normaliser for ``mean`` (e.g. the sum of centerness weights).

        Returns:
            the loss ``[*]`` (``none``) or a scalar, times ``loss_weight``.
        """
        if pred.shape[-1] != 4 or target.shape[-1] != 4:
            raise ValueError(
                f"boxes must be [..., 4] xyxy, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        _, giou = iou_and_giou(pred, target, self.eps)
        return self.loss_weight * weight_reduce(1 - giou, weight, self.reduction, avg_factor)
