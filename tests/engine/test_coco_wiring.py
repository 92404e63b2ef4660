"""COCODetectionMetric (coco plugin) wired through Predictor and the Validation callback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import ctx_for
from torch import nn

from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.callbacks.metric_updater import MetricUpdater
from fcos_core.engine.callbacks.validation import Validation
from fcos_core.engine.data_loader import DataLoader
from fcos_core.engine.functions import update_metric
from fcos_core.engine.predictor import Predictor
from fcos_core.engine.trainer import Trainer

metric_mod = pytest.importorskip("fcos_plugin_coco.metric")
collate_mod = pytest.importorskip("fcos_plugin_coco.collate")

BOXES = {1: [[4.0, 4.0, 20.0, 24.0]], 2: [[2.0, 6.0, 30.0, 28.0], [10.0, 10.0, 16.0, 18.0]]}


def _ann(tmp_path):
    images = [{"id": i, "width": 32, "height": 32, "file_name": f"{i}.jpg"} for i in BOXES]
    anns, k = [], 1
    for img_id, boxes in BOXES.items():
        for x1, y1, x2, y2 in boxes:
            anns.append(
                {
                    "id": k,
                    "image_id": img_id,
                    "category_id": 7,
                    "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
            k += 1
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "thing"}]}
        )
    )
    return str(path)


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return len(BOXES)

    def __getitem__(self, i):
        img_id = list(BOXES)[i]
        boxes = np.array(BOXES[img_id], dtype=np.float32)
        return {
            "img": torch.zeros(3, 32, 32),
            "gt_bboxes": torch.from_numpy(boxes),
            "gt_classes": torch.zeros(len(boxes), dtype=torch.int64),
            "img_id": img_id,
            "ori_shape": (32, 32),
            "img_shape": (32, 32),
            "pad_shape": (32, 32),
            "scale_factor": np.array([1.0, 1.0], dtype=np.float32),
        }


class _Oracle(nn.Module):
    """Returns the ground truth as detections (or nothing with ``blind``)."""

    def __init__(self, blind=False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.blind = blind

    def forward(self, batch):
        out = []
        for boxes, labels in zip(batch["gt_bboxes"], batch["gt_classes"]):
            keep = slice(0, 0) if self.blind else slice(None)
            out.append(
                {
                    "boxes": boxes[keep],
                    "scores": torch.ones(len(boxes))[keep],
                    "labels": labels[keep],
                }
            )
        return out


def _loader():
    return DataLoader(_Items(), batch_size=2, collate_fn=collate_mod.collate_2d)


@pytest.mark.parametrize("blind,expected", [(False, 1.0), (True, 0.0)])
def test_predictor_with_coco_metric(tmp_path, blind, expected):
    pred = Predictor(
        model=_Oracle(blind),
        data_loader=[_loader()],
        device="cpu",
        metrics=metric_mod.COCODetectionMetric(_ann(tmp_path)),
        callbacks=[MetricUpdater(update_metric)],
    )
    results = pred.run(ctx_for(tmp_path))
    assert set(results) >= {"mAP", "AP50", "AR100"}
    assert results["mAP"] == pytest.approx(expected)


def test_validation_callback_with_coco_metric(tmp_path):
    ckpt = Checkpoint(save_dir=str(tmp_path / "ckpt"), monitor_metric_key="mAP")
    trainer = Trainer(
        model=_Oracle(),
        num_epochs=0,
        device="cpu",
        callbacks=[Validation(_loader(), callbacks=[MetricUpdater(update_metric)]), ckpt],
        val_metrics=metric_mod.COCODetectionMetric(_ann(tmp_path)),
    )
    results = trainer.run(ctx_for(tmp_path, stage="int_infer"))
    assert results["mAP"] == pytest.approx(1.0)
    assert ckpt.best == pytest.approx(1.0)
