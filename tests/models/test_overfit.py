"""A small FCOS learns 8 synthetic images to COCO AP50 >= 0.9 (scored by pycocotools)."""

from __future__ import annotations

import contextlib
import io
import time

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_core.testing.detection_data import synthetic_batch

SIZE = 64


def coco_ap(batch: dict, detections: list[dict], num_classes: int) -> dict[str, float]:
    """COCO box AP of ``detections`` against the batch's boxes, with pycocotools."""
    images, anns, res = [], [], []
    for i, (bx, lb) in enumerate(zip(batch["gt_bboxes"], batch["gt_classes"])):
        images.append({"id": i + 1, "width": SIZE, "height": SIZE})
        for (x1, y1, x2, y2), c in zip(bx.tolist(), lb.tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    for i, d in enumerate(detections):
        for (x1, y1, x2, y2), s, c in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()
        ):
            res.append(
                {
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        gt.createIndex()
        if not res:
            return {"AP": 0.0, "AP50": 0.0}
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


@pytest.mark.slow
def test_overfits_eight_images(tiny):
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = tiny.make_fcos(num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    start = time.perf_counter()
    model.train()
    first = None
    for _ in range(150):
        losses = model(batch)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        dets = model(batch)
    elapsed = time.perf_counter() - start
    ap = coco_ap(batch, dets, 3)
    assert loss.item() < 0.5 * first
    assert ap["AP50"] >= 0.9, ap
    assert elapsed < 60, elapsed
