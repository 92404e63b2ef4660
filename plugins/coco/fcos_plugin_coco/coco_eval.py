"""Run COCO bbox evaluation with pycocotools or faster-coco-eval on in-memory data.

Both backends get the same ground truth (a fresh shallow copy each run: pycocotools writes
``ignore`` flags into the annotation dicts) and the same detections as an [N, 7] float64 array
``[image_id, x, y, w, h, score, category_id]``, which both libraries' ``loadRes`` accept.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import numpy as np

from fcos_core.engine.summary import COCO_KEYS

Backend = Literal["pycocotools", "faster_coco_eval"]
#: the 12 numbers of COCOeval.stats, in its order (the names fcos reports everywhere)
STAT_KEYS = COCO_KEYS


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
        raise ImportError(
            "backend 'faster_coco_eval' needs the faster-coco-eval package: "
            "pip install 'fcos-plugin-coco[fast]'"
        )
    if name not in ("pycocotools", "faster_coco_eval"):
        raise ValueError(f"backend must be auto, pycocotools or faster_coco_eval, got {name!r}")
    return name  # type: ignore[return-value]


def _gt_copy(gt: dict) -> dict:
    out = dict(gt)
    out["annotations"] = [dict(a) for a in gt["annotations"]]
    return out


@attrs.frozen(eq=False)
class BboxEvaluation:
    """One COCO bbox evaluation: the 12 summary numbers and what they are made of.

    ``precision`` is COCOeval's ``eval["precision"]`` ``[T, R, K, A, M]`` (IoU thresholds x 101
    recall points x categories x area ranges x max-detection settings; -1 where a category has
    no ground truth), ``recall`` its ``eval["recall"]`` ``[T, K, A, M]``. ``cat_ids`` gives the
    category of each ``K`` index, ``summary`` the text pycocotools' ``summarize()`` prints.
    """

    stats: np.ndarray  # [12] in STAT_KEYS order
    precision: np.ndarray  # [T, R, K, A, M]
    recall: np.ndarray  # [T, K, A, M]
    iou_thrs: np.ndarray  # [T]
    rec_thrs: np.ndarray  # [R]
    cat_ids: tuple[int, ...]
    max_dets: tuple[int, ...]
    summary: str

    def per_class(self) -> list[dict[str, Any]]:
        """Per category: ``AP`` (IoU .50:.95), ``AP50`` and ``AR100`` (area all), each averaged
        exactly as ``summarize()`` averages all categories, so a category's numbers equal
        pycocotools' own evaluation restricted to it (``params.catIds = [id]``); None when
        the category has no ground truth in the evaluated images."""
        if self.precision.size == 0:
            return [
                {"category_id": c, "AP": None, "AP50": None, "AR100": None} for c in self.cat_ids
            ]
        m100 = self.max_dets.index(100) if 100 in self.max_dets else len(self.max_dets) - 1
        t50 = int(np.argmin(np.abs(self.iou_thrs - 0.5)))
        rows = []
        for k, cat in enumerate(self.cat_ids):
            rows.append(
                {
                    "category_id": int(cat),
                    "AP": _mean_valid(self.precision[:, :, k, 0, m100]),
                    "AP50": _mean_valid(self.precision[t50, :, k, 0, m100]),
                    "AR100": _mean_valid(self.recall[:, k, 0, m100]),
                }
            )
        return rows


def _mean_valid(x: np.ndarray) -> float | None:
    """pycocotools' average: the mean of the entries > -1, -1 (here None) when there are none."""
    x = np.asarray(x)
    valid = x[x > -1]
    return float(valid.mean()) if valid.size else None


def evaluate_bbox(
    gt: dict,
    dets: np.ndarray,
    img_ids: Sequence[int] | None = None,
    backend: Backend = "pycocotools",
) -> np.ndarray:
    """The 12 COCO summary numbers (see :data:`STAT_KEYS`) for ``dets`` against ``gt``.

    ``img_ids`` restricts the evaluation (default: every image of ``gt``). With no detection
    at all the result is all zeros (pycocotools cannot load an empty result set).
    """
    return evaluate_bbox_full(gt, dets, img_ids, backend).stats


def evaluate_bbox_full(
    gt: dict,
    dets: np.ndarray,
    img_ids: Sequence[int] | None = None,
    backend: Backend = "pycocotools",
) -> BboxEvaluation:
    """:func:`evaluate_bbox` with the per-category arrays kept (:class:`BboxEvaluation`)."""
    cat_ids = tuple(sorted(int(c["id"]) for c in gt.get("categories", [])))
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    if len(dets) == 0:
        # nothing detected: every category with ground truth has AP 0 (its precision is 0
        # at every recall), as pycocotools reports for a category no detection names
        return _empty_evaluation(gt, img_ids, cat_ids)
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
            # its summarize() prints through print_function: keep the lines for the summary
            ev = COCOeval_faster(
                coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: print(*a, file=sink)
            )
        else:
            raise ValueError(f"unknown backend {backend!r}")
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return BboxEvaluation(
        stats=np.asarray(ev.stats[: len(STAT_KEYS)], dtype=np.float64),
        precision=np.asarray(ev.eval["precision"], dtype=np.float64),
        recall=np.asarray(ev.eval["recall"], dtype=np.float64),
        iou_thrs=np.asarray(ev.params.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(ev.params.recThrs, dtype=np.float64),
        cat_ids=tuple(int(c) for c in ev.params.catIds),
        max_dets=tuple(ev.params.maxDets),
        summary=_summary_lines(sink.getvalue()),
    )


def _summary_lines(printed: str) -> str:
    """The 12 "Average Precision/Recall" lines of ``summarize()`` (both libraries print more)."""
    lines = [ln.strip() for ln in printed.splitlines() if ln.strip().startswith("Average")]
    return "\n".join(lines)


def _empty_evaluation(
    gt: dict, img_ids: Sequence[int] | None, cat_ids: tuple[int, ...]
) -> BboxEvaluation:
    iou_thrs = np.linspace(0.5, 0.95, 10)
    rec_thrs = np.linspace(0.0, 1.0, 101)
    wanted = None if img_ids is None else {int(i) for i in img_ids}
    has_gt = {
        int(a["category_id"])
        for a in gt.get("annotations", [])
        if not a.get("iscrowd", 0) and (wanted is None or int(a["image_id"]) in wanted)
    }
    present = np.asarray([c in has_gt for c in cat_ids], dtype=bool)
    precision = np.full((len(iou_thrs), len(rec_thrs), len(cat_ids), 4, 3), -1.0)
    recall = np.full((len(iou_thrs), len(cat_ids), 4, 3), -1.0)
    precision[:, :, present] = 0.0
    recall[:, present] = 0.0
    return BboxEvaluation(
        stats=np.zeros(len(STAT_KEYS)),
        precision=precision,
        recall=recall,
        iou_thrs=iou_thrs,
        rec_thrs=rec_thrs,
        cat_ids=cat_ids,
        max_dets=(1, 10, 100),
        summary="",
    )
