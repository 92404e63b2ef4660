"""Time DynamicFcosTarget and FCOSMultiStrideFilter per image next to plain references.

    .venv/bin/python benchmarks/bench_targets_postprocess.py [--quick] [--batch 8] [--repeats 5]

At 512x512 (strides 8..128, 5,456 positions, 80 classes) with 20 and 100 boxes per image:

* target assignment: the vectorised ``DynamicFcosTarget`` vs :func:`reference_simota`, a
  straightforward SimOTA that loops over images and boxes (HAT's structure), checked first to
  give the same assignment;
* post-process: ``FCOSMultiStrideFilter`` (pre-filter on the logit, decode survivors) vs
  :func:`reference_detect` (sigmoid and decode everything, threshold, batched_nms), checked to
  give the same detections;
* a full training step of the seed model (EfficientNet-B0 + BiFPN + FCOSHead, batch ``--batch``)
  when the efficientnet and BiFPN plugins are installed, and the share of it spent in target
  assignment (must be < 10%); otherwise the line says it was skipped.

Times are medians over ``--repeats`` runs, per image. ``--quick`` uses 128x128 inputs, few
repeats and batch 2 (a smoke run, not a measurement).
"""

from __future__ import annotations

import os

# busy-waiting OpenMP threads slow down many times when cores are shared (see DESIGN-NOTES)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.ops import (
    batched_nms,
    box_iou,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.layout import flatten_outputs
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.points import distances_to_boxes, grid_points
from fcos_core.models.post_process import FCOSMultiStrideFilter

STRIDES = [8, 16, 32, 64, 128]
NUM_CLASSES = 80


# --- plain references ---------------------------------------------------------------------


def reference_simota(
    outputs: Sequence[torch.Tensor],
    strides: Sequence[int],
    gt_bboxes: Sequence[torch.Tensor],
    gt_classes: Sequence[torch.Tensor],
    *,
    topk: int = 10,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reg_weight: float = 2.0,
    radius: float | None = None,
) -> dict[str, torch.Tensor]:
    """SimOTA written the plain way: a loop over images and, inside, over ground truths.

    Uses torchvision's focal loss, GIoU loss and box_iou. Returns ``labels``, ``matched_gt``,
    ``label_weights``, ``centerness_targets``, ``bbox_weights`` ([B, P] each), as
    ``DynamicFcosTarget`` does.
    """
    flat = flatten_outputs(outputs, len(strides))
    cls, box = flat.cls.detach().float(), flat.box.detach().float()
    bsz, num_points, num_classes = cls.shape
    points, pstr = grid_points(flat.sizes, strides)
    n0 = flat.sizes[0][0] * flat.sizes[0][1]
    pred = distances_to_boxes(points, box * pstr[:, None])
    out = {
        "labels": torch.full((bsz, num_points), num_classes, dtype=torch.long),
        "matched_gt": torch.full((bsz, num_points), -1, dtype=torch.long),
        "label_weights": torch.ones(bsz, num_points),
        "centerness_targets": torch.zeros(bsz, num_points),
        "bbox_weights": torch.zeros(bsz, num_points),
    }
    for b in range(bsz):
        best_cost = torch.full((num_points,), math.inf)
        for g, (gbox, glab) in enumerate(zip(gt_bboxes[b].float(), gt_classes[b].tolist())):
            x1, y1, x2, y2 = gbox.tolist()
            px, py = points[:, 0], points[:, 1]
            inside = (px > x1) & (py > y1) & (px < x2) & (py < y2)
            if glab < 0:
                continue
            cand = inside.clone()
            if radius is not None:
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                cand &= ((px - cx).abs() < radius * pstr) & ((py - cy).abs() < radius * pstr)
            if not cand.any():
                d2 = (px[:n0] - (x1 + x2) / 2) ** 2 + (py[:n0] - (y1 + y2) / 2) ** 2
                cand[int(d2.argmin())] = True
            idx = torch.nonzero(cand).squeeze(1)
            onehot = torch.zeros(len(idx), num_classes)
            onehot[:, glab] = 1.0
            c_cls = sigmoid_focal_loss(cls[b, idx], onehot, alpha, gamma).sum(1)
            gb = gbox.expand(len(idx), 4)
            c_reg = reg_weight * generalized_box_iou_loss(pred[b, idx], gb)
            cost = c_cls + c_reg
            ious = box_iou(gbox[None], pred[b, idx])[0]
            k = max(1, int(ious.topk(min(topk, len(idx))).values.sum()))
            chosen = cost.topk(min(k, len(idx)), largest=False).indices
            for j in chosen.tolist():
                p = int(idx[j])
                if cost[j] < best_cost[p]:
                    best_cost[p] = cost[j]
                    out["matched_gt"][b, p] = g
                    out["labels"][b, p] = glab
                    out["centerness_targets"][b, p] = ious[j]
                    left, t = float(px[p]) - x1, float(py[p]) - y1
                    r, bt = x2 - float(px[p]), y2 - float(py[p])
                    if inside[p]:
                        out["bbox_weights"][b, p] = math.sqrt(
                            min(left, r) / max(left, r) * min(t, bt) / max(t, bt)
                        )
                    else:
                        out["bbox_weights"][b, p] = 1.0
        for gbox, glab in zip(gt_bboxes[b].float(), gt_classes[b].tolist()):
            if glab < 0:
                x1, y1, x2, y2 = gbox.tolist()
                px, py = points[:, 0], points[:, 1]
                inside = (px > x1) & (py > y1) & (px < x2) & (py < y2)
                out["label_weights"][b, inside & (out["matched_gt"][b] < 0)] = 0.0
    return out


def reference_detect(
    outputs: Sequence[torch.Tensor],
    strides: Sequence[int],
    *,
    threshold: float,
    score_threshold: float,
    nms_pre: int,
    iou_threshold: float,
    max_per_img: int,
    clamp_shape: tuple[int, int],
) -> list[dict[str, torch.Tensor]]:
    """Sigmoid and decode everything, threshold, per-level top-k, clamp, batched_nms."""
    s = len(strides)
    cls, box, ctr = outputs[:s], outputs[s : 2 * s], outputs[2 * s : 3 * s]
    res = []
    for b in range(cls[0].shape[0]):
        bxs, scs, lbs = [], [], []
        for lvl, stride in enumerate(strides):
            c = cls[lvl][b]
            nc, h, w = c.shape
            logits = c.permute(1, 2, 0).reshape(-1, nc)
            score = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr[lvl][b].reshape(-1, 1)))
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * stride + stride // 2
            boxes = distances_to_boxes(pts, box[lvl][b].permute(1, 2, 0).reshape(-1, 4) * stride)
            pos, lab = torch.nonzero(
                (logits > threshold) & (score > score_threshold), as_tuple=True
            )
            sc = score[pos, lab]
            if sc.numel() > nms_pre:
                sc, top = sc.topk(nms_pre)
                pos, lab = pos[top], lab[top]
            bxs.append(boxes[pos])
            scs.append(sc)
            lbs.append(lab)
        bx, sc, lb = torch.cat(bxs), torch.cat(scs), torch.cat(lbs)
        bx[:, 0::2] = bx[:, 0::2].clamp(0, clamp_shape[1])
        bx[:, 1::2] = bx[:, 1::2].clamp(0, clamp_shape[0])
        keep = batched_nms(bx, sc, lb, iou_threshold)[:max_per_img]
        res.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return res


# --- inputs -------------------------------------------------------------------------------


def random_head_outputs(
    batch: int, size: int, seed: int = 0, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, ...]:
    """Head-like outputs: background logits around -6 (as a trained model's), few above
    logit(0.05); box distances of a few strides."""
    g = torch.Generator().manual_seed(seed)
    cls, box, ctr = [], [], []
    for s in STRIDES:
        h = w = max(size // s, 1)
        cls.append(torch.randn(batch, num_classes, h, w, generator=g) - 6.0)
        box.append(torch.rand(batch, 4, h, w, generator=g) * 4)
        ctr.append(torch.randn(batch, 1, h, w, generator=g))
    return (*cls, *box, *ctr)


def random_gt(
    batch: int,
    n: int,
    size: int,
    seed: int = 0,
    crowd_every: int = 0,
    num_classes: int = NUM_CLASSES,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` random boxes per image (4..size/2 pixels), optionally every k-th a crowd box."""
    g = torch.Generator().manual_seed(seed + 1)
    boxes, labels = [], []
    for _ in range(batch):
        wh = torch.rand(n, 2, generator=g) * (size / 2 - 4) + 4
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        lab = torch.randint(0, num_classes, (n,), generator=g)
        if crowd_every:
            lab[::crowd_every] = -1
        labels.append(lab)
    return boxes, labels


def make_targets(
    radius: float | None = None, num_classes: int = NUM_CLASSES, strides: Sequence[int] = STRIDES
) -> DynamicFcosTarget:
    return DynamicFcosTarget(
        strides=list(strides),
        cls_out_channels=num_classes,
        background_label=num_classes,
        topK=10,
        loss_cls=FocalLoss(num_classes=num_classes + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"),
        center_sampling_radius=radius,
    )


def assignments_equal(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    return (
        torch.equal(got["matched_gt"], ref["matched_gt"])
        and torch.equal(got["labels"], ref["labels"])
        and torch.equal(got["label_weights"], ref["label_weights"])
        and torch.allclose(got["centerness_targets"], ref["centerness_targets"], atol=1e-5)
        and torch.allclose(got["bbox_weights"], ref["bbox_weights"], atol=1e-5)
    )


# --- timing -------------------------------------------------------------------------------


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seed_model_step_time(batch: int, size: int, repeats: int) -> float | None:
    """Seconds per image of one float training step of the seed model, or None without the
    efficientnet / BiFPN plugins."""
    from fcos_core.build import build
    from fcos_core.config.loader import LineMap
    from fcos_core.config.validate import Validator
    from fcos_core.plugins import load_host

    host = load_host()
    if (
        "efficientnet" not in host.registries["backbones"]
        or "BiFPN" not in host.registries["necks"]
    ):
        return None
    cfg = {
        "type": "FCOS",
        "backbone": {
            "type": "efficientnet",
            "model_type": "b0",
            "num_classes": 1000,
            "include_top": False,
            "activation": "relu",
            "use_se_block": False,
        },
        "neck": {
            "type": "BiFPN",
            "in_strides": [2, 4, 8, 16, 32],
            "out_strides": STRIDES,
            "stride2channels": {2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
            "out_channels": 64,
            "num_outs": 5,
            "stack": 3,
            "start_level": 2,
            "end_level": -1,
            "fpn_name": "bifpn_sum",
        },
        "head": {
            "type": "FCOSHead",
            "num_classes": NUM_CLASSES,
            "in_strides": STRIDES,
            "out_strides": STRIDES,
            "stride2channels": dict.fromkeys(STRIDES, 64),
            "upscale_bbox_pred": False,
            "feat_channels": 64,
            "stacked_convs": 4,
            "int8_output": False,
            "int16_output": True,
            "dequant_output": True,
        },
        "targets": {
            "type": "DynamicFcosTarget",
            "strides": STRIDES,
            "cls_out_channels": NUM_CLASSES,
            "background_label": NUM_CLASSES,
            "topK": 10,
            "loss_cls": {
                "type": "FocalLoss",
                "loss_name": "cls",
                "num_classes": NUM_CLASSES + 1,
                "alpha": 0.25,
                "gamma": 2.0,
                "loss_weight": 1.0,
                "reduction": "none",
            },
            "loss_reg": {
                "type": "GIoULoss",
                "loss_name": "reg",
                "loss_weight": 2.0,
                "reduction": "none",
            },
        },
        "post_process": {
            "type": "FCOSMultiStrideFilter",
            "strides": STRIDES,
            "threshold": -2.944,
            "for_compile": False,
            "score_threshold": 0.05,
            "iou_threshold": 0.6,
            "max_shape": [size, size],
        },
        "loss_cls": {
            "type": "FocalLoss",
            "loss_name": "cls",
            "num_classes": NUM_CLASSES + 1,
            "alpha": 0.25,
            "gamma": 2.0,
            "loss_weight": 1.0,
        },
        "loss_centerness": {
            "type": "CrossEntropyLoss",
            "loss_name": "centerness",
            "use_sigmoid": True,
        },
        "loss_reg": {"type": "GIoULoss", "loss_name": "reg", "loss_weight": 1.0},
    }
    validator = Validator(host.registries, LineMap(None))
    node = validator.check_component("models", cfg, ("model",))
    if validator.problems:
        raise SystemExit(
            "seed model config rejected: " + "; ".join(p.render() for p in validator.problems)
        )
    model = build(node).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gtb, gtl = random_gt(batch, 20, size, seed=3)
    data = {"img": torch.randn(batch, 3, size, size), "gt_bboxes": gtb, "gt_classes": gtl}

    def step() -> None:
        losses = model(data)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    return median_time(step, repeats) / batch


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run at reduced size")
    ap.add_argument("--batch", type=int, default=8, help="images per timed call")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, batch, repeats = (128, 2, 2) if args.quick else (512, args.batch, args.repeats)
    print(
        f"size {size}x{size}, batch {batch}, {repeats} repeats, {args.threads} thread(s); "
        "times per image"
    )

    targets = make_targets()
    assign_per_img: dict[int, float] = {}
    for n in (20, 100):
        outputs = random_head_outputs(batch, size, seed=n)
        gtb, gtl = random_gt(batch, n, size, seed=n, crowd_every=10)
        got = targets(outputs, gtb, gtl)
        ref = reference_simota(outputs, STRIDES, gtb, gtl)
        same = assignments_equal(got, ref)
        t_vec = median_time(lambda: targets(outputs, gtb, gtl), repeats) / batch
        t_ref = (
            median_time(lambda: reference_simota(outputs, STRIDES, gtb, gtl), max(1, repeats // 2))
            / batch
        )
        assign_per_img[n] = t_vec
        print(
            f"targets  {n:3d} boxes: DynamicFcosTarget {t_vec * 1e3:8.2f} ms   "
            f"per-GT loop reference {t_ref * 1e3:8.2f} ms   ratio {t_ref / t_vec:6.1f}x   "
            f"same assignment: {same}"
        )

    post = FCOSMultiStrideFilter(STRIDES)
    for n in (20, 100):
        outputs = list(random_head_outputs(batch, size, seed=100 + n))
        # plant n confident objects per image so NMS has real work
        g = torch.Generator().manual_seed(n)
        for b in range(batch):
            for _ in range(n):
                lvl = int(torch.randint(0, 3, (1,), generator=g))
                c, h, w = outputs[lvl].shape[1:]
                outputs[lvl][
                    b,
                    torch.randint(0, c, (1,), generator=g),
                    torch.randint(0, h, (1,), generator=g),
                    torch.randint(0, w, (1,), generator=g),
                ] = 3.0
        kw = dict(
            threshold=post.threshold,
            score_threshold=post.score_threshold,
            nms_pre=post.nms_pre,
            iou_threshold=post.iou_threshold,
            max_per_img=post.max_per_img,
            clamp_shape=(size, size),
        )
        got = post(outputs, (size, size))
        ref = reference_detect(outputs, STRIDES, **kw)
        same = all(
            torch.equal(a["labels"], b_["labels"]) and torch.equal(a["boxes"], b_["boxes"])
            for a, b_ in zip(got, ref)
        )
        t_vec = median_time(lambda: post(outputs, (size, size)), repeats) / batch
        t_ref = median_time(lambda: reference_detect(outputs, STRIDES, **kw), repeats) / batch
        print(
            f"post     {n:3d} objs : FCOSMultiStrideFilter {t_vec * 1e3:6.2f} ms   "
            f"plain reference {t_ref * 1e3:8.2f} ms   ratio {t_ref / t_vec:6.1f}x   "
            f"same detections: {same}"
        )

    step = seed_model_step_time(batch, size, max(1, repeats // 2))
    if step is None:
        print("train step: skipped (the efficientnet and BiFPN plugins are not installed)")
    else:
        share = assign_per_img[20] / step
        verdict = "OK" if share < 0.10 else "TOO SLOW"
        print(
            f"train step (seed model, 20 boxes): {step * 1e3:8.1f} ms per image; target "
            f"assignment {share * 100:5.1f}% of it (limit 10%): {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
