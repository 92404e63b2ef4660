"""COCODetectionMetric: COCO bbox mAP of a detector's outputs, in original-image pixels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.annotations import DEFAULT_MAX_JSON_BYTES, check_coco_layout, load_json
from fcos_plugin_coco.coco_eval import (
    STAT_KEYS,
    BboxEvaluation,
    evaluate_bbox_full,
    resolve_backend,
)


def _rows(x: Any, n: int) -> np.ndarray:
    """A per-image [B, 2] float64 array from a tensor, array or list (e.g. ``scale_factor``)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif isinstance(x, (list, tuple)):
        x = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in x]
    return np.asarray(x, dtype=np.float64).reshape(n, 2)


def _np(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


class COCODetectionMetric:
    """COCO bbox evaluation with the 12 standard numbers.

    Contiguous labels map back to category ids with the datasets' rule (label ``i`` = the
    ``i``-th smallest category id of ``ann_file``). :meth:`update` maps each predicted box
    from the network-input frame back to original-image pixels,
    ``orig = (box + crop_offset) / scale_factor``, clips it to the original image and keeps the
    image as evaluated (an image seen with no detection counts its objects as missed; an image
    seen twice, as DistributedSampler pads, counts once). :meth:`compute` evaluates the seen
    images (all of ``ann_file`` when nothing was seen) and returns ``mAP`` (AP@[.5:.95]),
    ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``,
    ``ARm``, ``ARl``; -1 is pycocotools' "no ground truth in this area range", and an empty
    prediction set gives all zeros. Under ``torch.distributed`` predictions are gathered from
    every rank, evaluated on rank 0 and the result broadcast.

    After :meth:`compute`, :meth:`per_class` gives the per-category table of that evaluation
    (AP, AP50, AR100 and the number of ground-truth boxes; rank 0 only), :attr:`evaluation` its
    :class:`~fcos_plugin_coco.coco_eval.BboxEvaluation` (precision/recall arrays) and
    :meth:`detections` the evaluated detections (``fcos val`` draws its report from them).

    Args:
        ann_file: the COCO instances json of the evaluated split.
        demo_if_missing: generate the demo dataset into ``ann_file``'s folder when it is missing.
        backend: ``auto`` (faster-coco-eval when installed), ``pycocotools`` or
            ``faster_coco_eval``; both give the same numbers.
    """

    def __init__(
        self,
        ann_file: str,
        demo_if_missing: bool = False,
        backend: str = "auto",
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        ann_file = os.fspath(ann_file)
        self.backend = resolve_backend(backend)
        if not os.path.exists(ann_file):
            if not demo_if_missing:
                raise FcosUserError(
                    f"annotation file {ann_file} does not exist",
                    hint="point ann_file at the split's instances json, or set "
                    "demo_if_missing for the demo data",
                )
            from fcos_plugin_coco.demo.generate import ensure_demo

            ensure_demo(os.path.dirname(os.path.abspath(ann_file)))
            if not os.path.exists(ann_file):
                raise FcosUserError(
                    f"{ann_file} is still missing after generating the demo data",
                    hint="use instances_train.json or instances_val.json",
                )
        gt = load_json(ann_file, max_json_bytes)
        check_coco_layout(gt, ann_file)
        self.ann_file = ann_file
        self.gt = self._complete_gt(gt)
        self.cat_ids = sorted({int(c["id"]) for c in self.gt["categories"]})
        self._cat_arr = np.asarray(self.cat_ids, dtype=np.float64)
        self._known_imgs = {img["id"] for img in self.gt["images"]}
        self.reset()

    @staticmethod
    def _complete_gt(gt: dict) -> dict:
        """pycocotools needs ``area`` and ``iscrowd``; fill them (bbox area, 0) when absent."""
        anns = []
        for a in gt["annotations"]:
            if "area" not in a or "iscrowd" not in a:
                a = dict(a)
                bbox = a.get("bbox", [0, 0, 0, 0])
                a.setdefault("area", float(bbox[2]) * float(bbox[3]))
                a.setdefault("iscrowd", 0)
            anns.append(a)
        out = dict(gt)
        out["annotations"] = anns
        return out

    def reset(self) -> None:
        self._dets: dict[int, np.ndarray] = {}  # image id -> [N, 7] rows, insertion-ordered
        self.evaluation: BboxEvaluation | None = None
        self._evaluated: dict[int, np.ndarray] = {}

    def update(self, batch: dict[str, Any], outputs: Sequence[dict[str, Any]]) -> None:
        """Add one batch of detections (``outputs[i]``: ``boxes`` [N, 4] xyxy in the input
        frame, ``scores`` [N], ``labels`` [N]) for the images of ``batch``."""
        img_ids = [int(i) for i in batch["img_id"]]
        n = len(img_ids)
        if len(outputs) != n:
            raise ValueError(f"{len(outputs)} outputs for a batch of {n} images")
        scale = _rows(batch["scale_factor"], n)
        offset = (
            _rows(batch["crop_offset"], n)
            if batch.get("crop_offset") is not None
            else np.zeros((n, 2))
        )
        for i, (img_id, out) in enumerate(zip(img_ids, outputs)):
            if img_id in self._dets:
                continue
            if img_id not in self._known_imgs:
                raise FcosUserError(
                    f"image id {img_id} is not in {self.ann_file}",
                    hint="evaluate the split whose json the metric loads",
                )
            boxes = _np(out["boxes"], np.float64).reshape(-1, 4)
            scores = _np(out["scores"], np.float64).reshape(-1)
            labels = _np(out["labels"], np.int64).reshape(-1)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.cat_ids)):
                raise ValueError(
                    f"labels must be in 0..{len(self.cat_ids) - 1} "
                    f"({len(self.cat_ids)} categories in {self.ann_file}), got "
                    f"{labels.min()}..{labels.max()}"
                )
            boxes = (boxes + np.tile(offset[i], 2)) / np.tile(scale[i], 2)
            h, w = batch["ori_shape"][i]
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            rows = np.empty((len(boxes), 7), dtype=np.float64)
            rows[:, 0] = img_id
            rows[:, 1:3] = boxes[:, :2]
            rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
            rows[:, 5] = scores
            rows[:, 6] = self._cat_arr[labels] if len(labels) else 0
            self._dets[img_id] = rows

    def _gathered(self) -> dict[int, np.ndarray]:
        """All ranks' detections on every rank (the local ones when not distributed)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self._dets
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._dets)
        merged: dict[int, np.ndarray] = {}
        for part in parts:
            for img_id, rows in part.items():
                merged.setdefault(img_id, rows)  # padded duplicates count once
        return merged

    def compute(self) -> dict[str, float]:
        dets = self._gathered()
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        result: dict[str, float] | None = None
        if not distributed or dist.get_rank() == 0:
            img_ids = list(dets) or None
            rows = np.concatenate(list(dets.values())) if dets else np.zeros((0, 7))
            self.evaluation = evaluate_bbox_full(self.gt, rows, img_ids, self.backend)
            self._evaluated = (
                dict(dets) if dets else {i: np.zeros((0, 7)) for i in sorted(self._known_imgs)}
            )
            result = {k: float(v) for k, v in zip(STAT_KEYS, self.evaluation.stats)}
        if distributed:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        assert result is not None
        return result

    def detections(self) -> dict[int, np.ndarray]:
        """The last :meth:`compute`'s detections: image id -> ``[N, 7]`` rows ``[image_id, x, y,
        w, h, score, category_id]`` in original-image pixels (every evaluated image, empty
        arrays included; empty before a compute and on ranks other than 0)."""
        return dict(self._evaluated)

    def category_names(self) -> dict[int, str]:
        """Category id -> name (the id as text when the json gives no name)."""
        return {int(c["id"]): str(c.get("name", c["id"])) for c in self.gt["categories"]}

    def gt_counts(self, img_ids: Sequence[int] | None = None) -> dict[int, int]:
        """Category id -> non-crowd ground-truth boxes in ``img_ids`` (default: the last
        evaluated images): the boxes pycocotools scores against (crowd ones are ignored)."""
        wanted = set(self._evaluated if img_ids is None else (int(i) for i in img_ids))
        counts = dict.fromkeys(self.cat_ids, 0)
        for a in self.gt["annotations"]:
            if int(a["image_id"]) in wanted and not a.get("iscrowd", 0):
                counts[int(a["category_id"])] = counts.get(int(a["category_id"]), 0) + 1
        return counts

    def per_class(self) -> list[dict[str, Any]]:
        """Per category of the last :meth:`compute`: ``category_id``, ``name``, ``AP``
        (IoU .50:.95), ``AP50``, ``AR100`` (None: no ground truth of it in the evaluated images)
        and ``gt_boxes``; in category-id order. Empty before a compute (and off rank 0)."""
        if self.evaluation is None:
            return []
        names = self.category_names()
        counts = self.gt_counts()
        rows = []
        for row in self.evaluation.per_class():
            cat = row["category_id"]
            rows.append(
                {
                    "category_id": cat,
                    "name": names.get(cat, str(cat)),
                    "AP": row["AP"],
                    "AP50": row["AP50"],
                    "AR100": row["AR100"],
                    "gt_boxes": int(counts.get(cat, 0)),
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"COCODetectionMetric({self.ann_file!r}, backend={self.backend!r})"
