"""Run COCO bbox evaluation with pycocotools or faster-coco-eval on in-memory data.

Both backends get the same ground truth (a fresh shallow copy each run: pycocotools writes
``ignore`` flags into the annotation dicts) and the same detections as an [N, 7] float64 array
``[image_id, x, y, w, h, score, category_id]``, which both libraries' ``loadRes`` accept.
"""

from __future__ import annotations

import contextlib
import io
from typing import Literal, Optional, Sequence

import numpy as np

Backend = Literal["pycocotools", "faster_coco_eval"]
STAT_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl",
             "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def fast_backend_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> Backend:
    if name == "auto":
        return "faster_coco_eval" if fast_backend_available() else "pycocotools"
    if name == "faster_coco_eval" and not fast_backend_available():
        raise ImportError("backend 'faster_coco_eval' needs the faster-coco-eval package: "
                          "pip install 'fcos-plugin-coco[fast]'")
    if name not in ("pycocotools", "faster_coco_eval"):
        raise ValueError(f"backend must be auto, pycocotools or faster_coco_eval, got {name!r}")
    return name  # type: ignore[return-value]


def _gt_copy(gt: dict) -> dict:
    out = dict(gt)
    out["annotations"] = [dict(a) for a in gt["annotations"]]
    return out


def evaluate_bbox(gt: dict, dets: np.ndarray, img_ids: Optional[Sequence[int]] = None,
                  backend: Backend = "pycocotools") -> np.ndarray:
    """The 12 COCO summary numbers (see :data:`STAT_KEYS`) for ``dets`` against ``gt``.

    ``img_ids`` restricts the evaluation (default: every image of ``gt``). With no detection
    at all the result is all zeros (pycocotools cannot load an empty result set).
    """
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    if len(dets) == 0:
        return np.zeros(len(STAT_KEYS))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = _gt_copy(gt)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, "bbox")
        elif backend == "faster_coco_eval":
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster

            coco_gt = FastCOCO(_gt_copy(gt), print_function=lambda *a, **k: None)
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:len(STAT_KEYS)], dtype=np.float64)
