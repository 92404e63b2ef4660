"""Cross-entropy: sigmoid (binary, soft targets such as centerness) or softmax over classes."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fcos_core.models.losses.reduce import check_reduction, check_weight, weight_reduce


class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional element weight and ``avg_factor``.

    Args:
        use_sigmoid: True: ``binary_cross_entropy_with_logits(pred, target)`` elementwise
            (``target`` in [0, 1], same shape); False: softmax ``cross_entropy`` of ``[N, C]``
            logits against ``[N]`` int64 labels.
        loss_name: key of this loss in the detector's loss dict.
        loss_weight: multiplier of the result.
        reduction: ``"none" | "mean" | "sum"``.
    """

    def __init__(
        self,
        use_sigmoid: bool = False,
        loss_name: str = "ce",
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_weight(loss_weight)
        check_reduction(reduction)
        self.use_sigmoid = use_sigmoid
        self.loss_name = loss_name
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            pred: sigmoid: ``[*]`` logits; softmax: ``[N, C]`` logits.
            target: sigmoid: ``[*]`` float targets; softmax: ``[N]`` int64 labels.
            weight: optional ``[*]`` (sigmoid) or ``[N]`` (softmax) weight.
            avg_factor: optional normaliser for ``mean``.

        Returns:
            the loss, reduced per ``reduction``, times ``loss_weight``.
        """
        if self.use_sigmoid:
            if target.shape != pred.shape:
                raise ValueError(
                    f"sigmoid cross-entropy needs target shape {tuple(pred.shape)}"
                    f", got {tuple(target.shape)}"
                )
            loss = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), reduction="none")
        else:
            loss = F.cross_entropy(pred, target, reduction="none")
        return self.loss_weight * weight_reduce(loss, weight, self.reduction, avg_factor)
