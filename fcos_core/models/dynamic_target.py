"""DynamicFcosTarget: SimOTA-style dynamic label assignment (YOLOX), vectorised.

For every image ``b``, ground truth ``g`` and output position ``p`` (all strides concatenated):

1. **Candidates**: ``p`` lies strictly inside box ``g`` (and, with ``center_sampling_radius``
   ``r``, within ``r * stride`` of the box centre, as FCOS's centre sampling). A box that
   contains no position at all (tiny boxes) gets the finest-stride position nearest to its
   centre as its only candidate, so every object is learnt.
2. **Cost** ``[B, G, P]`` = classification cost (``loss_cls``, e.g. focal with
   ``reduction="none"``, against the one-hot of the box's class, summed over classes)
   + ``loss_reg`` (e.g. ``GIoULoss`` with ``loss_weight=2.0``, ``reduction="none"``) between the
   predicted box at ``p`` and box ``g``; infinite (never chosen) where ``p`` is not a
   candidate.
3. **Dynamic k**: ``k_g = max(min_k, floor(sum of the topK largest IoUs))`` between box ``g``
   and the predicted boxes at its candidates (``min_k = 1`` is SimOTA's rule); ``g`` claims its
   ``k_g`` cheapest candidates.
4. **Conflicts**: a position claimed by several boxes goes to the one with the lowest cost.
5. **Ignore regions**: boxes with a negative label (crowd) take no part in matching; negative
   positions strictly inside one are ignored (weight 0 in the classification loss). Positives
   stay positive: a crowd box often encloses annotated objects that must still be learnt.

Targets: the class of the matched box (``background_label`` elsewhere); the matched box in
pixels (the regression loss compares decoded boxes); centerness target = IoU of the predicted
box with the matched box (``centerness_target="geometric"``: the geometric centerness below,
FCOS's original target); box-loss weight = geometric centerness
``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of the position in the matched box (1.0 for a
tiny box's fallback position, which lies outside it).

No Python loop runs over images or boxes: ground truths are padded to the largest count in the
batch with a validity mask; the dense ``[B, G, P]`` work is only the inside-box test, after which
every step runs on the list of candidate (image, box, position) pairs (a few percent of
``B*G*P``): per-box top-k and ranking are a sort by (box, key), conflicts a scatter-min. The
classification cost uses ``sum_c L(x_c, onehot_c) = sum_c L(x_c, 0) + L(x_g, 1) - L(x_g, 0)``,
exact for any elementwise loss, so it costs ``O(candidate positions * C + pairs)`` rather than
``O(B*G*P*C)``.
The 1e8 "outside" cost of SimOTA is implicit: non-candidates are never in the pair list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from fcos_core.models.layout import split_outputs
from fcos_core.models.losses.giou import iou_and_giou
from fcos_core.models.points import distances_to_boxes, grid_points


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
        min_k: floor on the dynamic k (>= 1; SimOTA's is 1). At initialisation the predicted
            boxes overlap nothing, so every box gets k = 1 until they improve.
        centerness_target: ``"iou"`` (IoU of the predicted box with its match, HAT's) or
            ``"geometric"`` (FCOS's centerness of the point in its box). IoU targets stay near
            0 until the predicted boxes are good, and since the score multiplies in the
            centerness, early models then score every detection near 0.
    """

    def __init__(
        self,
        strides: Sequence[int],
        cls_out_channels: int,
        background_label: int,
        topK: int,
        loss_cls: nn.Module,
        loss_reg: nn.Module,
        center_sampling_radius: float | None = None,
        min_k: int = 1,
        centerness_target: str = "iou",
    ) -> None:
        super().__init__()
        strides = list(strides)
        if not strides or sorted(set(strides)) != strides:
            raise ValueError(f"strides must be non-empty and strictly increasing, got {strides}")
        if cls_out_channels < 1:
            raise ValueError(f"cls_out_channels must be >= 1, got {cls_out_channels}")
        if background_label != cls_out_channels:
            raise ValueError(
                f"background_label={background_label} must equal cls_out_channels="
                f"{cls_out_channels} (background is the label after the last class)"
            )
        if topK < 1:
            raise ValueError(f"topK must be >= 1, got {topK}")
        if min_k < 1:
            raise ValueError(f"min_k must be >= 1, got {min_k}")
        if centerness_target not in ("iou", "geometric"):
            raise ValueError(
                f"centerness_target must be 'iou' or 'geometric', got {centerness_target!r}"
            )
        self.centerness_target = centerness_target
        for name, loss in (("loss_cls", loss_cls), ("loss_reg", loss_reg)):
            if loss is None:
                raise ValueError(f"{name} is required: the matching cost is computed with it")
            if getattr(loss, "reduction", "none") != "none":
                raise ValueError(
                    f"{name} must have reduction 'none' (an elementwise matching "
                    f"cost), got {loss.reduction!r}"
                )
        loss_classes = getattr(loss_cls, "num_classes", None)
        if loss_classes is not None and loss_classes != cls_out_channels + 1:
            raise ValueError(
                f"loss_cls.num_classes={loss_classes} must be cls_out_channels + 1 "
                f"= {cls_out_channels + 1} (classes plus background)"
            )
        if center_sampling_radius is not None and center_sampling_radius <= 0:
            raise ValueError(
                f"center_sampling_radius must be > 0 or null, got {center_sampling_radius}"
            )
        self.strides = strides
        self.cls_out_channels = cls_out_channels
        self.background_label = background_label
        self.topK = topK
        self.loss_cls = loss_cls
        self.loss_reg = loss_reg
        self.center_sampling_radius = center_sampling_radius
        self.min_k = min_k

    @torch.no_grad()
    def forward(
        self, outputs: Sequence[Tensor], gt_bboxes: Sequence[Tensor], gt_classes: Sequence[Tensor]
    ) -> FcosTargets:
        """Assign targets.

        Args:
            outputs: the body's flat tuple ``(cls_0.., box_0.., ctr_0..)``; box outputs in stride
                units (training mode).
            gt_bboxes: per image ``[N_b, 4]`` xyxy pixels.
            gt_classes: per image ``[N_b]`` int64 labels in ``0..C-1``, negative = ignore.

        Returns:
            :class:`FcosTargets`.
        """
        cls_maps, box_maps, _ = split_outputs(outputs, len(self.strides))
        sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_maps]
        # channels-first [B, C, P]: concatenating without a transpose is a plain copy, and
        # only candidate positions are ever read
        cls = torch.cat([c.detach().float().flatten(2) for c in cls_maps], 2)
        box = torch.cat([b.detach().float().flatten(2) for b in box_maps], 2).transpose(1, 2)
        bsz, num_classes, num_points = cls.shape
        if num_classes != self.cls_out_channels:
            raise ValueError(
                f"cls outputs have {num_classes} channels, targets expect "
                f"cls_out_channels={self.cls_out_channels}"
            )
        if len(gt_bboxes) != bsz or len(gt_classes) != bsz:
            raise ValueError(
                f"batch of {bsz} images got {len(gt_bboxes)} gt_bboxes and "
                f"{len(gt_classes)} gt_classes entries"
            )
        device = cls.device
        points, pstrides = grid_points(sizes, self.strides, device)
        pred_boxes = distances_to_boxes(points, box * pstrides[:, None])  # [B, P, 4]

        counts = torch.tensor([len(b) for b in gt_bboxes], device=device)
        gmax = int(counts.max()) if bsz else 0
        labels = torch.full(
            (bsz, num_points), self.background_label, dtype=torch.long, device=device
        )
        out = FcosTargets(
            labels=labels,
            label_weights=torch.ones(bsz, num_points, device=device),
            pos_mask=torch.zeros(bsz, num_points, dtype=torch.bool, device=device),
            matched_gt=torch.full((bsz, num_points), -1, dtype=torch.long, device=device),
            bbox_targets=torch.zeros(bsz, num_points, 4, device=device),
            bbox_weights=torch.zeros(bsz, num_points, device=device),
            centerness_targets=torch.zeros(bsz, num_points, device=device),
            points=points,
            point_strides=pstrides,
        )
        if gmax == 0:
            return out

        # [B, G, 4] / [B, G]; padding rows are invalid (and zero boxes contain no point)
        gt = pad_sequence(
            [b.to(device, torch.float32).reshape(-1, 4) for b in gt_bboxes], batch_first=True
        )
        gl = pad_sequence(
            [c.to(device, torch.long).reshape(-1) for c in gt_classes],
            batch_first=True,
            padding_value=-1,
        )
        valid = torch.arange(gmax, device=device)[None, :] < counts[:, None]
        if bool(((gl >= self.cls_out_channels) & valid).any()):
            raise ValueError(f"gt_classes has labels >= cls_out_channels={self.cls_out_channels}")
        real = valid & (gl >= 0)  # boxes that are matched
        ignore = valid & (gl < 0)  # crowd / ignore regions

        px, py = points[:, 0], points[:, 1]  # [P]
        x1, y1, x2, y2 = (gt[..., i, None] for i in range(4))  # [B, G, 1]
        inside = (px > x1) & (py > y1) & (px < x2) & (py < y2)  # [B, G, P]
        cand = inside & real[..., None]
        if self.center_sampling_radius is not None:
            radius = self.center_sampling_radius * pstrides
            cand &= ((px - (x1 + x2) / 2).abs() < radius) & ((py - (y1 + y2) / 2).abs() < radius)
        # ignored negatives: strictly inside a crowd box (positives are excluded below)
        in_ignore = (inside & ignore[..., None]).any(dim=1)  # [B, P]

        # candidate (image, box, position) pairs: typically ~5% of B*G*P, so everything
        # after this line works on the pairs only
        bi, gi, pi = torch.nonzero(cand, as_tuple=True)
        is_inside = torch.ones_like(bi, dtype=torch.bool)
        fb, fg, fp = self._fallback(cand, real, gt, points, sizes[0])
        if fb.numel():
            bi, gi, pi = torch.cat((bi, fb)), torch.cat((gi, fg)), torch.cat((pi, fp))
            is_inside = torch.cat((is_inside, inside[fb, fg, fp]))
        if bi.numel() == 0:  # only ignore regions
            out["label_weights"] = (~in_ignore).float()
            return out

        # --- cost per pair ---
        # all classes against 0, only at positions that are someone's candidate
        uniq, inv = torch.unique(bi * num_points + pi, return_inverse=True)
        rows = cls[uniq // num_points, :, uniq % num_points]  # [U, C]
        neg_cost = self.loss_cls(rows, torch.zeros_like(rows)).sum(-1)[inv]  # [N]
        glab = gl[bi, gi]
        logit_g = cls[bi, glab, pi]  # [N] logit of the box's class
        cls_cost = (
            neg_cost
            + self.loss_cls(logit_g, torch.ones_like(logit_g))
            - self.loss_cls(logit_g, torch.zeros_like(logit_g))
        )
        pbox, tbox = pred_boxes[bi, pi], gt[bi, gi]  # [N, 4]
        iou, _ = iou_and_giou(pbox, tbox)
        cost = cls_cost + self.loss_reg(pbox, tbox)

        # --- dynamic k: floor(sum of the topK largest IoUs) of each box's candidates ---
        group = bi * gmax + gi  # [N] flat (image, box) id
        ngroups = bsz * gmax
        count = torch.bincount(group, minlength=ngroups)
        start_of = torch.cumsum(count, 0) - count
        order, rank = _rank_within(group, iou, start_of, descending=True)
        top = rank < self.topK
        iou_sum = torch.zeros(ngroups, device=device).index_add_(
            0, group[order][top], iou[order][top]
        )
        k = iou_sum.floor().long().clamp(min=self.min_k)  # [B*G]
        # --- each box claims its k cheapest candidates ---
        order, rank = _rank_within(group, cost, start_of, descending=False)
        chosen = order[rank < k[group[order]]]  # pair indices

        # --- conflicts: a position claimed twice goes to the cheaper claim (then lower index)
        flat_pt = bi[chosen] * num_points + pi[chosen]
        c_cost = cost[chosen]
        best_cost = torch.full((bsz * num_points,), float("inf"), device=device)
        best_cost.scatter_reduce_(0, flat_pt, c_cost, reduce="amin")
        cheapest = c_cost == best_cost[flat_pt]
        first = torch.full((bsz * num_points,), gmax, dtype=torch.long, device=device)
        first.scatter_reduce_(0, flat_pt[cheapest], gi[chosen][cheapest], reduce="amin")
        win = chosen[cheapest & (gi[chosen] == first[flat_pt])]
        wb, wp, wg = bi[win], pi[win], gi[win]

        # geometric centerness of each winner in its box (why: FCOS weights the box loss by it
        # so that off-centre positions, whose boxes are harder to predict, count less)
        tb = tbox[win]
        lr = torch.stack((px[wp] - tb[:, 0], tb[:, 2] - px[wp]), -1)
        tbm = torch.stack((py[wp] - tb[:, 1], tb[:, 3] - py[wp]), -1)
        geo = (
            (
                (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                * (tbm.min(-1).values / tbm.max(-1).values.clamp(min=1e-6))
            )
            .clamp(min=0)
            .sqrt()
        )
        geo = torch.where(is_inside[win], geo, 1.0)

        out["labels"][wb, wp] = glab[win]
        out["pos_mask"][wb, wp] = True
        out["matched_gt"][wb, wp] = wg
        out["bbox_targets"][wb, wp] = tb
        out["bbox_weights"][wb, wp] = geo
        out["centerness_targets"][wb, wp] = (
            geo if self.centerness_target == "geometric" else iou[win]
        )
        out["label_weights"] = (~(in_ignore & ~out["pos_mask"])).float()
        return out

    @staticmethod
    def _fallback(
        cand: Tensor, real: Tensor, gt: Tensor, points: Tensor, finest: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pairs ``(b, g, p)`` giving each real box without candidates the finest-stride
        position nearest to its centre (so tiny boxes still get one positive)."""
        nb, ng = torch.nonzero(real & ~cand.any(dim=-1), as_tuple=True)
        if nb.numel() == 0:
            return nb, ng, nb
        n0 = finest[0] * finest[1]
        centre = (gt[nb, ng, :2] + gt[nb, ng, 2:]) / 2  # [M, 2]
        d2 = ((points[None, :n0] - centre[:, None]) ** 2).sum(-1)  # [M, P0]
        return nb, ng, d2.argmin(dim=-1)


def _rank_within(
    group: Tensor, value: Tensor, start_of: Tensor, descending: bool
) -> tuple[Tensor, Tensor]:
    """Order pairs by (group, value) and give each its rank inside its group.

    Args:
        group: ``[N]`` group id of each pair.
        value: ``[N]`` sort key.
        start_of: ``[num_groups]`` index where each group starts in the grouped order.

    Returns:
        ``order [N]`` (pair indices, grouped, sorted by value within a group; ties keep pair
        order) and ``rank [N]`` (0-based rank of ``order[i]`` within its group).
    """
    order = torch.sort(value, descending=descending, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    rank = torch.arange(order.numel(), device=order.device) - start_of[group[order]]
    return order, rank
