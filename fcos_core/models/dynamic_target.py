"""DynamicFcosTarget: SimOTA-style dynamic label assignment (YOLOX), vectorised.

For every image ``b``, ground truth ``g`` and output position ``p`` (all strides concatenated):

1. **Candidates**: ``p`` lies strictly inside box ``g`` (and, with ``center_sampling_radius``
   ``r``, within ``r * stride`` of the box centre, as FCOS's centre sampling). A box that
   contains no position at all (tiny boxes) gets the finest-stride position nearest to its
   centre as its only candidate, so every object is learnt.
2. **Cost** ``[B, G, P]`` = classification cost (``loss_cls``, e.g. focal with
   ``reduction="none"``, against the one-hot of the box's class, summed over classes)
   + ``loss_reg`` (e.g. ``GIoULoss`` with ``loss_weight=2.0``, ``reduction="none"``) between the
   predicted box at ``p`` and box ``g``; + 1e8 where ``p`` is not a candidate.
3. **Dynamic k**: ``k_g = max(1, floor(sum of the topK largest IoUs))`` between box ``g`` and the
   predicted boxes at its candidates; ``g`` claims its ``k_g`` cheapest candidates.
4. **Conflicts**: a position claimed by several boxes goes to the one with the lowest cost.
5. **Ignore regions**: boxes with a negative label (crowd) take no part in matching; negative
   positions strictly inside one are ignored (weight 0 in the classification loss). Positives
   stay positive: a crowd box often encloses annotated objects that must still be learnt.

Targets: the class of the matched box (``background_label`` elsewhere); the matched box in
pixels (the regression loss compares decoded boxes); centerness target = IoU of the predicted
box with the matched box; box-loss weight = geometric centerness
``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of the position in the matched box (1.0 for a
tiny box's fallback position, which lies outside it).

No Python loop runs over images or boxes: ground truths are padded to the largest count in the
batch with a validity mask and every step is a batched tensor op. The classification cost uses
``sum_c L(x_c, onehot_c) = sum_c L(x_c, 0) + L(x_g, 1) - L(x_g, 0)``, exact for any
elementwise loss, so it costs ``O(B*P*C + B*G*P)`` rather than ``O(B*G*P*C)``.
"""

from __future__ import annotations

from typing import Sequence, TypedDict

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from fcos_core.models.layout import flatten_outputs
from fcos_core.models.losses.giou import iou_and_giou
from fcos_core.models.points import distances_to_boxes, grid_points

#: cost added to positions outside a box's candidates
OUTSIDE_COST = 1e8


class FcosTargets(TypedDict):
    """Per-point training targets (``P`` positions over all strides, ``B`` images)."""

    labels: Tensor  # [B, P] int64 class, background_label for negatives and ignored points
    label_weights: Tensor  # [B, P] float, 0 for ignored points, else 1
    pos_mask: Tensor  # [B, P] bool
    matched_gt: Tensor  # [B, P] int64 index into the image's gt list, -1 when not positive
    bbox_targets: Tensor  # [B, P, 4] xyxy pixels of the matched box (0 when not positive)
    bbox_weights: Tensor  # [B, P] geometric centerness of positives, 0 elsewhere
    centerness_targets: Tensor  # [B, P] IoU(pred box, matched box) for positives, 0 elsewhere
    points: Tensor  # [P, 2] (x, y) pixels
    point_strides: Tensor  # [P]


class DynamicFcosTarget(nn.Module):
    """SimOTA dynamic target assignment for FCOS (see the module docstring).

    Args:
        strides: strides of the head outputs, strictly increasing.
        cls_out_channels: number of classes (channels of the cls output).
        background_label: label given to background points; must equal ``cls_out_channels``
            (the focal loss's all-zero one-hot label).
        topK: number of largest IoUs summed into each box's dynamic k (>= 1).
        loss_cls: elementwise classification cost module (``reduction="none"``); called as
            ``loss_cls(logits, float_target)`` with equal shapes.
        loss_reg: elementwise box cost module (``reduction="none"``); called as
            ``loss_reg(pred_boxes, gt_boxes)`` with broadcasting ``[..., 4]`` xyxy boxes.
        center_sampling_radius: optional FCOS centre-sampling radius in strides.
    """

    def __init__(self, strides: Sequence[int], cls_out_channels: int, background_label: int,
                 topK: int, loss_cls: nn.Module, loss_reg: nn.Module,
                 center_sampling_radius: float | None = None) -> None:
        super().__init__()
        strides = list(strides)
        if not strides or sorted(set(strides)) != strides:
            raise ValueError(f"strides must be non-empty and strictly increasing, got {strides}")
        if cls_out_channels < 1:
            raise ValueError(f"cls_out_channels must be >= 1, got {cls_out_channels}")
        if background_label != cls_out_channels:
            raise ValueError(f"background_label={background_label} must equal cls_out_channels="
                             f"{cls_out_channels} (background is the label after the last class)")
        if topK < 1:
            raise ValueError(f"topK must be >= 1, got {topK}")
        for name, loss in (("loss_cls", loss_cls), ("loss_reg", loss_reg)):
            if loss is None:
                raise ValueError(f"{name} is required: the matching cost is computed with it")
            if getattr(loss, "reduction", "none") != "none":
                raise ValueError(f"{name} must have reduction 'none' (an elementwise matching "
                                 f"cost), got {loss.reduction!r}")
        loss_classes = getattr(loss_cls, "num_classes", None)
        if loss_classes is not None and loss_classes != cls_out_channels + 1:
            raise ValueError(f"loss_cls.num_classes={loss_classes} must be cls_out_channels + 1 "
                             f"= {cls_out_channels + 1} (classes plus background)")
        if center_sampling_radius is not None and center_sampling_radius <= 0:
            raise ValueError(f"center_sampling_radius must be > 0 or null, got "
                             f"{center_sampling_radius}")
        self.strides = strides
        self.cls_out_channels = cls_out_channels
        self.background_label = background_label
        self.topK = topK
        self.loss_cls = loss_cls
        self.loss_reg = loss_reg
        self.center_sampling_radius = center_sampling_radius

    @torch.no_grad()
    def forward(self, outputs: Sequence[Tensor], gt_bboxes: Sequence[Tensor],
                gt_classes: Sequence[Tensor]) -> FcosTargets:
        """Assign targets.

        Args:
            outputs: the body's flat tuple ``(cls_0.., box_0.., ctr_0..)``; box outputs in stride
                units (training mode).
            gt_bboxes: per image ``[N_b, 4]`` xyxy pixels.
            gt_classes: per image ``[N_b]`` int64 labels in ``0..C-1``, negative = ignore.

        Returns:
            :class:`FcosTargets`.
        """
        flat = flatten_outputs(outputs, len(self.strides))
        cls, box = flat.cls.detach().float(), flat.box.detach().float()
        bsz, num_points, num_classes = cls.shape
        if num_classes != self.cls_out_channels:
            raise ValueError(f"cls outputs have {num_classes} channels, targets expect "
                             f"cls_out_channels={self.cls_out_channels}")
        if len(gt_bboxes) != bsz or len(gt_classes) != bsz:
            raise ValueError(f"batch of {bsz} images got {len(gt_bboxes)} gt_bboxes and "
                             f"{len(gt_classes)} gt_classes entries")
        device = cls.device
        points, pstrides = grid_points(flat.sizes, self.strides, device)
        pred_boxes = distances_to_boxes(points, box * pstrides[:, None])  # [B, P, 4]

        counts = torch.tensor([len(b) for b in gt_bboxes], device=device)
        gmax = int(counts.max()) if bsz else 0
        labels = torch.full((bsz, num_points), self.background_label, dtype=torch.long,
                            device=device)
        out = FcosTargets(
            labels=labels,
            label_weights=torch.ones(bsz, num_points, device=device),
            pos_mask=torch.zeros(bsz, num_points, dtype=torch.bool, device=device),
            matched_gt=torch.full((bsz, num_points), -1, dtype=torch.long, device=device),
            bbox_targets=torch.zeros(bsz, num_points, 4, device=device),
            bbox_weights=torch.zeros(bsz, num_points, device=device),
            centerness_targets=torch.zeros(bsz, num_points, device=device),
            points=points, point_strides=pstrides)
        if gmax == 0:
            return out

        # [B, G, 4] / [B, G]; padding rows are invalid (and zero boxes contain no point)
        gt = pad_sequence([b.to(device, torch.float32).reshape(-1, 4) for b in gt_bboxes],
                          batch_first=True)
        gl = pad_sequence([c.to(device, torch.long).reshape(-1) for c in gt_classes],
                          batch_first=True, padding_value=-1)
        valid = torch.arange(gmax, device=device)[None, :] < counts[:, None]
        if bool(((gl >= self.cls_out_channels) & valid).any()):
            raise ValueError(f"gt_classes has labels >= cls_out_channels={self.cls_out_channels}")
        real = valid & (gl >= 0)  # boxes that are matched
        ignore = valid & (gl < 0)  # crowd / ignore regions

        px, py = points[:, 0], points[:, 1]  # [P]
        x1, y1, x2, y2 = (gt[..., i, None] for i in range(4))  # [B, G, 1]
        inside = (px > x1) & (py > y1) & (px < x2) & (py < y2)  # [B, G, P]
        cand = inside
        if self.center_sampling_radius is not None:
            radius = self.center_sampling_radius * pstrides
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cand = cand & ((px - cx).abs() < radius) & ((py - cy).abs() < radius)
        cand = cand & real[..., None]
        cand = cand | self._fallback(cand, real, gt, points, flat.sizes[0])

        # --- cost [B, G, P] ---
        zeros = torch.zeros_like(cls)
        neg_cost = self.loss_cls(cls, zeros).sum(-1)  # [B, P]: every class against 0
        glab = gl.clamp(min=0)
        logit_g = torch.gather(cls.transpose(1, 2), 1,
                               glab[..., None].expand(bsz, gmax, num_points))  # [B, G, P]
        cls_cost = (neg_cost[:, None, :] + self.loss_cls(logit_g, torch.ones_like(logit_g))
                    - self.loss_cls(logit_g, torch.zeros_like(logit_g)))
        iou, _ = iou_and_giou(pred_boxes[:, None], gt[:, :, None])  # [B, G, P]
        reg_cost = self.loss_reg(pred_boxes[:, None], gt[:, :, None])
        cost = cls_cost + reg_cost + OUTSIDE_COST * (~cand)

        # --- dynamic k and selection ---
        kmax = min(self.topK, num_points)
        top_iou = torch.where(cand, iou, 0.0).topk(kmax, dim=-1).values
        k = top_iou.sum(-1).floor().long().clamp(min=1)  # [B, G]
        sel = cost.topk(kmax, dim=-1, largest=False).indices  # [B, G, kmax]
        take = (torch.arange(kmax, device=device) < k[..., None]) & torch.gather(cand, 2, sel)
        match = torch.zeros_like(cand).scatter_(2, sel, take)  # [B, G, P]

        # --- conflicts: the cheapest claim wins ---
        best = torch.where(match, cost, float("inf")).argmin(dim=1)  # [B, P]
        pos = match.any(dim=1)
        bidx = best[:, None, :]  # [B, 1, P]
        labels = torch.where(pos, torch.gather(gl, 1, best), labels)
        tbox = torch.gather(gt, 1, best[..., None].expand(bsz, num_points, 4))  # [B, P, 4]
        t_iou = torch.gather(iou, 1, bidx).squeeze(1)
        in_matched = torch.gather(inside, 1, bidx).squeeze(1)

        # geometric centerness of each position in its matched box (why: FCOS weights box
        # loss by it so that off-centre positions, whose boxes are harder, count less)
        lr = torch.stack((px - tbox[..., 0], tbox[..., 2] - px), -1)
        tb = torch.stack((py - tbox[..., 1], tbox[..., 3] - py), -1)
        geo = ((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)).clamp(min=0)
               * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)).clamp(min=0)).sqrt()
        geo = torch.where(in_matched, geo, 1.0)

        ignored = (inside & ignore[..., None]).any(dim=1) & ~pos
        pos_f = pos.float()
        out.update(
            labels=labels,
            label_weights=(~ignored).float(),
            pos_mask=pos,
            matched_gt=torch.where(pos, best, -1),
            bbox_targets=tbox * pos_f[..., None],
            bbox_weights=geo * pos_f,
            centerness_targets=t_iou * pos_f,
        )
        return out

    @staticmethod
    def _fallback(cand: Tensor, real: Tensor, gt: Tensor, points: Tensor,
                  finest: tuple[int, int]) -> Tensor:
        """``[B, G, P]`` mask: for real boxes without candidates, the finest-stride position
        nearest to the box centre (so tiny boxes still get one positive)."""
        need = real & ~cand.any(dim=-1)  # [B, G]
        fb = torch.zeros_like(cand)
        if not bool(need.any()):
            return fb
        n0 = finest[0] * finest[1]
        centre = (gt[..., :2] + gt[..., 2:]) / 2  # [B, G, 2]
        d2 = ((points[None, None, :n0] - centre[:, :, None]) ** 2).sum(-1)  # [B, G, P0]
        nearest = d2.argmin(dim=-1, keepdim=True)  # [B, G, 1]
        return fb.scatter_(2, nearest, need[..., None])
