"""What ``fcos val`` writes besides the COCO summary: per-class table, precision-recall curves,
confusion matrix and the worst images, all from one evaluation of :class:`COCODetectionMetric`.

**Matching** (confusion matrix and worst images), per image, for the detections scoring at least
``score_threshold`` against the non-crowd ground truth, at ``iou_threshold`` (IoU of xyxy boxes
in original-image pixels):

1. *correct*: each class on its own, detections in descending score take the unmatched
   ground-truth box of their class with the highest IoU >= the threshold (COCO's greedy rule);
2. *confused*: the detections left, again in descending score, take the unmatched ground-truth
   box of another class with the highest IoU >= the threshold;
3. detections still left that cover a crowd region (intersection over the detection's area >=
   the threshold, as COCO ignores them) are not counted; the others are *false positives*;
   ground-truth boxes still unmatched are *missed*.

The confusion matrix has a row per ground-truth class plus ``background`` (false positives)
and a column per predicted class plus ``background`` (missed boxes): a correct detection adds 1
to (class, class), a confused one to (true class, predicted class). Per image, the errors are
the detections that are not correct (confused + false positives) plus the ground-truth boxes
not found (confused + missed); the images with the most errors are drawn.

The **precision-recall curves** are pycocotools' own interpolated precision at its 101 recall
points (``eval["precision"]``, area all, 100 detections), at IoU 0.5 and averaged over IoU
0.50:0.95, per class and averaged over the classes (as the summary's mAP averages them).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from fcos_core.atomic_write import write_atomically

BACKGROUND = "background"
#: the most classes drawn one panel each in pr_curves.png (the table has them all)
MAX_PR_PANELS = 80
#: draw the counts into the confusion matrix up to this many classes
MAX_ANNOTATED_CLASSES = 30
#: worst images smaller than this (longer side, px) are drawn enlarged by a whole factor
DRAW_MIN_SIDE = 512


def write_file(path: Path, write: Callable[[Any], Any]) -> Path:
    """Atomic write of a report file, readable by others as a plain file would be."""
    write_atomically(path, write)
    path.chmod(0o644)  # the atomic writer's temp files are private (0600)
    return path


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box of ``a`` [N, 4] with every one of ``b`` [M, 4] -> [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return w.clip(0) * h.clip(0)


@attrs.frozen(eq=False)
class ImageMatch:
    """The matching of one image (indices into its detections / ground-truth boxes)."""

    img_id: int
    gt_boxes: np.ndarray  # [G, 4] xyxy, non-crowd
    gt_cats: np.ndarray  # [G] category ids
    det_boxes: np.ndarray  # [D, 4] xyxy, score >= threshold, descending score
    det_scores: np.ndarray  # [D]
    det_cats: np.ndarray  # [D]
    det_to_gt: np.ndarray  # [D] matched gt index, -1: none
    det_ignored: np.ndarray  # [D] bool: on a crowd region, not counted

    @property
    def correct(self) -> np.ndarray:
        m = self.det_to_gt >= 0
        out = np.zeros(len(self.det_cats), dtype=bool)
        out[m] = self.gt_cats[self.det_to_gt[m]] == self.det_cats[m]
        return out

    @property
    def false_positives(self) -> int:
        """Detections that are not correct (confused or on background), crowd ones aside."""
        return int((~self.correct & ~self.det_ignored).sum())

    @property
    def missed(self) -> int:
        """Ground-truth boxes not found as their class (confused or with no detection)."""
        return int(len(self.gt_cats) - self.correct.sum())


def _greedy(
    order: np.ndarray,
    iou: np.ndarray,
    allowed: np.ndarray,
    taken: np.ndarray,
    det_to_gt: np.ndarray,
    thr: float,
) -> None:
    for d in order:
        if det_to_gt[d] >= 0:
            continue
        cand = np.where(allowed[d] & ~taken & (iou[d] >= thr), iou[d], -1.0)
        if cand.size and cand.max() >= 0:
            g = int(np.argmax(cand))
            det_to_gt[d] = g
            taken[g] = True


def match_image(
    img_id: int,
    gt_xyxy: np.ndarray,
    gt_cats: np.ndarray,
    gt_crowd: np.ndarray,
    det_xyxy: np.ndarray,
    det_scores: np.ndarray,
    det_cats: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> ImageMatch:
    """Match one image's detections to its ground truth (the module docstring's rule)."""
    gt_xyxy = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    gt_cats = np.asarray(gt_cats, np.int64).reshape(-1)
    gt_crowd = np.asarray(gt_crowd, bool).reshape(-1)
    keep = np.asarray(det_scores, np.float64).reshape(-1) >= score_threshold
    order = np.argsort(-np.asarray(det_scores, np.float64).reshape(-1)[keep], kind="stable")
    boxes = np.asarray(det_xyxy, np.float64).reshape(-1, 4)[keep][order]
    scores = np.asarray(det_scores, np.float64).reshape(-1)[keep][order]
    cats = np.asarray(det_cats, np.int64).reshape(-1)[keep][order]
    real, crowd = gt_xyxy[~gt_crowd], gt_xyxy[gt_crowd]
    real_cats = gt_cats[~gt_crowd]
    iou = box_iou(boxes, real)
    det_to_gt = np.full(len(boxes), -1, dtype=np.int64)
    taken = np.zeros(len(real), dtype=bool)
    seq = np.arange(len(boxes))
    _greedy(seq, iou, cats[:, None] == real_cats[None, :], taken, det_to_gt, iou_threshold)
    _greedy(seq, iou, cats[:, None] != real_cats[None, :], taken, det_to_gt, iou_threshold)
    ignored = np.zeros(len(boxes), dtype=bool)
    if len(crowd) and len(boxes):
        area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
        ioa = _intersection(boxes, crowd) / np.maximum(area, 1e-12)[:, None]
        ignored = (det_to_gt < 0) & (ioa.max(axis=1) >= iou_threshold)
    return ImageMatch(
        img_id=int(img_id),
        gt_boxes=real,
        gt_cats=real_cats,
        det_boxes=boxes,
        det_scores=scores,
        det_cats=cats,
        det_to_gt=det_to_gt,
        det_ignored=ignored,
    )


def gt_by_image(gt: dict, img_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """Image id -> (xyxy [G, 4], category ids [G], crowd flags [G]) from a COCO json dict."""
    wanted = {int(i) for i in img_ids}
    lists: dict[int, list[list[Any]]] = {i: [[], [], []] for i in wanted}
    for a in gt["annotations"]:
        i = int(a["image_id"])
        if i in lists:
            x, y, w, h = (float(v) for v in a["bbox"])
            lists[i][0].append([x, y, x + w, y + h])
            lists[i][1].append(int(a["category_id"]))
            lists[i][2].append(bool(a.get("iscrowd", 0)))
    return {
        i: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(c, np.int64), np.asarray(k, bool))
        for i, (b, c, k) in lists.items()
    }


def match_all(
    gt: dict, dets: dict[int, np.ndarray], iou_threshold: float = 0.5, score_threshold: float = 0.3
) -> list[ImageMatch]:
    """:func:`match_image` for every image of ``dets`` (image id -> ``[N, 7]`` metric rows
    ``[image_id, x, y, w, h, score, category_id]``), in image-id order."""
    truth = gt_by_image(gt, dets)
    out = []
    for img_id in sorted(dets):
        rows = np.asarray(dets[img_id], np.float64).reshape(-1, 7)
        xyxy = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
        boxes, cats, crowd = truth[int(img_id)]
        out.append(
            match_image(
                img_id,
                boxes,
                cats,
                crowd,
                xyxy,
                rows[:, 5],
                rows[:, 6].astype(np.int64),
                iou_threshold,
                score_threshold,
            )
        )
    return out


def coco_results(dets: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """Metric rows as COCO's results format: ``[{"image_id", "category_id", "bbox": [x, y, w,
    h], "score"}]`` (what ``COCO.loadRes`` reads), in image-id order."""
    out = []
    for img_id in sorted(dets):
        for r in np.asarray(dets[img_id], np.float64).reshape(-1, 7).tolist():
            out.append(
                {
                    "image_id": int(img_id),
                    "category_id": int(r[6]),
                    "bbox": [r[1], r[2], r[3], r[4]],
                    "score": r[5],
                }
            )
    return out


def confusion_matrix(matches: Sequence[ImageMatch], cat_ids: Sequence[int]) -> np.ndarray:
    """``[(K + 1), (K + 1)]`` counts: rows ground-truth class (+ background last), columns
    predicted class (+ background last); see the module docstring."""
    index = {int(c): k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    cm = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    for m in matches:
        found = np.zeros(len(m.gt_cats), dtype=bool)
        for d, g in enumerate(m.det_to_gt):
            if g >= 0:
                cm[index[int(m.gt_cats[g])], index[int(m.det_cats[d])]] += 1
                found[g] = True
            elif not m.det_ignored[d]:
                cm[bg, index[int(m.det_cats[d])]] += 1
        for g in np.flatnonzero(~found):
            cm[index[int(m.gt_cats[g])], bg] += 1
    return cm


def worst_images(matches: Sequence[ImageMatch], n: int) -> list[ImageMatch]:
    """The ``n`` images with the most errors (false positives + missed boxes); ties: more
    missed first, then the smaller image id. Images without an error are never listed."""
    ranked = sorted(
        (m for m in matches if m.false_positives + m.missed > 0),
        key=lambda m: (-(m.false_positives + m.missed), -m.missed, m.img_id),
    )
    return ranked[: max(0, n)]


# --- tables -----------------------------------------------------------------------------------


def format_per_class(rows: Sequence[dict[str, Any]]) -> str:
    """The per-class table as aligned text (the one training logs; ``-``: no ground truth)."""
    from fcos_core.engine.per_class import format_table

    return format_table(rows)


def _csv_bytes(rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_per_class_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    table = [["category_id", "name", "AP", "AP50", "AR100", "gt_boxes"]]
    table += [
        [
            r["category_id"],
            r["name"],
            "" if r["AP"] is None else f"{r['AP']:.6f}",
            "" if r["AP50"] is None else f"{r['AP50']:.6f}",
            "" if r["AR100"] is None else f"{r['AR100']:.6f}",
            r["gt_boxes"],
        ]
        for r in rows
    ]
    return write_file(path, lambda f: f.write(_csv_bytes(table)))


def write_confusion_csv(path: Path, cm: np.ndarray, names: Sequence[str]) -> Path:
    labels = [*names, BACKGROUND]
    table = [["gt \\ predicted", *labels]]
    table += [[labels[i], *(int(v) for v in cm[i])] for i in range(len(labels))]
    return write_file(path, lambda f: f.write(_csv_bytes(table)))


# --- figures ----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, plt: Any, generator: str) -> Path:
    try:
        return write_file(
            path, lambda f: fig.savefig(f, format="png", metadata={"Software": generator})
        )
    finally:
        plt.close(fig)


def pr_curves(evaluation: Any) -> dict[str, Any]:
    """Recall points and, per class and for all classes, the precision at IoU 0.5 and the
    mean over IoU 0.50:0.95 (None where the class has no ground truth)."""
    p = evaluation.precision  # [T, R, K, A, M]
    m100 = evaluation.max_dets.index(100) if 100 in evaluation.max_dets else -1
    t50 = int(np.argmin(np.abs(evaluation.iou_thrs - 0.5)))
    area_all = p[:, :, :, 0, m100]  # [T, R, K]
    curves: dict[str, Any] = {"recall": evaluation.rec_thrs, "classes": {}}
    valid = (area_all > -1).all(axis=(0, 1))  # categories with ground truth
    for k, cat in enumerate(evaluation.cat_ids):
        if not valid[k]:
            curves["classes"][int(cat)] = None
            continue
        curves["classes"][int(cat)] = (area_all[t50, :, k], area_all[:, :, k].mean(axis=0))
    if valid.any():
        curves["all"] = (
            area_all[t50][:, valid].mean(axis=1),
            area_all[:, :, valid].mean(axis=(0, 2)),
        )
    else:
        curves["all"] = None
    return curves


def plot_pr_curves(path: Path, evaluation: Any, names: dict[int, str], generator: str) -> Path:
    """``pr_curves.png``: the all-classes panel first, then one panel per class."""
    plt = _pyplot()
    curves = pr_curves(evaluation)
    panels = [("all classes", curves["all"])]
    panels += [
        (names.get(c, str(c)), v) for c, v in list(curves["classes"].items())[:MAX_PR_PANELS]
    ]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
    recall = curves["recall"]
    for ax, (title, value) in zip(axes.flat, panels):
        if value is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=9)
        else:
            at50, mean = value
            ax.plot(recall, at50, label=f"IoU 0.5 (AP {at50.mean():.3f})", linewidth=1.5)
            ax.plot(recall, mean, label=f"IoU .50:.95 (AP {mean.mean():.3f})", linewidth=1.5)
            ax.legend(fontsize=7, loc="lower left")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path, plt, generator)


def plot_confusion(
    path: Path,
    cm: np.ndarray,
    names: Sequence[str],
    generator: str,
    iou_threshold: float,
    score_threshold: float,
) -> Path:
    """``confusion_matrix.png``: each row scaled by its total (the colour), counts written
    in the cells up to :data:`MAX_ANNOTATED_CLASSES` classes."""
    plt = _pyplot()
    labels = [*names, BACKGROUND]
    n = len(labels)
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, np.maximum(totals, 1))
    size = min(max(4.0, 0.45 * n + 2.0), 30.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(
        f"confusion matrix (IoU >= {iou_threshold:g}, score >= {score_threshold:g})", fontsize=10
    )
    if n <= MAX_ANNOTATED_CLASSES + 1:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    return _save(fig, path, plt, generator)


#: drawing colours (RGB)
GT_COLOUR = (40, 200, 60)
MISSED_COLOUR = (255, 165, 0)
CORRECT_COLOUR = (0, 130, 255)
WRONG_COLOUR = (235, 30, 30)


def draw_match(rgb: np.ndarray, m: ImageMatch, names: dict[int, str]) -> Any:
    """The image with its ground truth (green; orange: not found as its class) and its
    detections above the score threshold (blue: correct; red: confused or false positive).
    An image under :data:`DRAW_MIN_SIDE` pixels is enlarged (nearest pixel, a whole factor)
    so that the captions stay readable."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3].astype(np.uint8)))
    k = max(1, DRAW_MIN_SIDE // max(img.size))
    if k > 1:
        img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    correct = m.correct
    found = {int(g) for g, ok in zip(m.det_to_gt, correct) if ok}
    for g, (box, cat) in enumerate(zip(m.gt_boxes, m.gt_cats)):
        colour = GT_COLOUR if g in found else MISSED_COLOUR
        draw.rectangle([float(v) * k for v in box], outline=colour, width=2 if g in found else 3)
        draw.text(
            (float(box[0]) * k + 2, float(box[3]) * k - 11),
            names.get(int(cat), str(cat)),
            fill=colour,
        )
    for d, (box, score, cat) in enumerate(zip(m.det_boxes, m.det_scores, m.det_cats)):
        if m.det_ignored[d]:
            continue
        colour = CORRECT_COLOUR if correct[d] else WRONG_COLOUR
        draw.rectangle([float(v) * k for v in box], outline=colour, width=1)
        draw.text(
            (float(box[0]) * k + 2, float(box[1]) * k + 1),
            f"{names.get(int(cat), str(cat))} {score:.2f}",
            fill=colour,
        )
    return img


def write_worst_images(
    folder: Path,
    worst: Sequence[ImageMatch],
    names: dict[int, str],
    read_image: Callable[[int], np.ndarray | None],
) -> list[dict[str, Any]]:
    """Draw each of ``worst`` into ``folder`` as ``NN_img<id>.png`` (rank order); an image
    ``read_image`` cannot give (None) is listed without a drawing."""
    out = []
    for rank, m in enumerate(worst, 1):
        entry: dict[str, Any] = {
            "rank": rank,
            "img_id": m.img_id,
            "false_positives": m.false_positives,
            "missed": m.missed,
            "gt_boxes": len(m.gt_cats),
            "detections": int((~m.det_ignored).sum()),
        }
        rgb = read_image(m.img_id)
        if rgb is not None:
            img = draw_match(rgb, m, names)
            path = folder / f"{rank:02d}_img{m.img_id}.png"
            write_file(path, lambda f, img=img: img.save(f, format="PNG"))
            entry["file"] = path.name
        out.append(entry)
    return out
