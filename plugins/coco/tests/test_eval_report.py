"""The parts of `fcos val`'s report, each against an independent reference: per-class AP against
pycocotools' own per-category evaluation, the confusion matrix against a count by hand of
hand-made boxes, and the figures by their pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fcos_plugin_coco import eval_report as er
from fcos_plugin_coco.metric import COCODetectionMetric

CATS = [
    {"id": 11, "name": "kiwi"},
    {"id": 2, "name": "apple"},
    {"id": 7, "name": "pear"},
    {"id": 5, "name": "plum"},
]  # plum: no ground truth at all


def _scene(seed: int, n_images: int = 12):
    """Ground truth with crowd regions, and detections: jittered boxes (some with the wrong
    class), duplicates and random false positives, over 3 of the 4 categories."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], {}
    for i in range(n_images):
        img_id = 100 + 7 * i
        images.append({"id": img_id, "width": 120, "height": 90, "file_name": f"{img_id}.jpg"})
        rows = []
        for _ in range(int(rng.integers(0, 5))):
            cat = int(rng.choice([11, 2, 7]))
            w, h = (float(v) for v in rng.uniform(8, 50, 2))
            x, y = float(rng.uniform(0, 120 - w)), float(rng.uniform(0, 90 - h))
            crowd = int(rng.random() < 0.1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                }
            )
            for _ in range(int(rng.integers(0, 3))):
                jit = rng.normal(0, 0.12, 4) * [w, h, w, h]
                label = cat if rng.random() < 0.8 else int(rng.choice([11, 2, 7, 5]))
                rows.append(
                    [
                        x + jit[0],
                        y + jit[1],
                        x + w + jit[2],
                        y + h + jit[3],
                        float(rng.uniform(0.05, 1.0)),
                        label,
                    ]
                )
        for _ in range(int(rng.integers(0, 4))):
            x, y = float(rng.uniform(0, 100)), float(rng.uniform(0, 70))
            rows.append(
                [
                    x,
                    y,
                    x + 20,
                    y + 20,
                    float(rng.uniform(0.05, 0.9)),
                    int(rng.choice([11, 2, 7, 5])),
                ]
            )
        dets[img_id] = np.asarray(rows, np.float64).reshape(-1, 6)
    return {"images": images, "annotations": anns, "categories": CATS}, dets


def _metric(tmp_path, gt, dets, backend):
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(gt))
    metric = COCODetectionMetric(str(ann), backend=backend)
    cat_ids = sorted(c["id"] for c in CATS)
    for img_id, rows in dets.items():
        labels = np.searchsorted(cat_ids, rows[:, 5].astype(int))
        batch = {"img_id": [img_id], "scale_factor": [np.ones(2)], "ori_shape": [(90, 120)]}
        metric.update(batch, [{"boxes": rows[:, :4], "scores": rows[:, 4], "labels": labels}])
    return metric


def _pycocotools_per_category(gt, rows, cat_id):
    """pycocotools' evaluation restricted to one category (params.catIds), run directly on the
    metric's rows [img, x, y, w, h, score, cat] (boxes clipped to the image, as evaluated)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(np.asarray(rows)), "bbox")
        ev.params.catIds = [cat_id]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_equals_pycocotools_per_category(tmp_path, backend, seed):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    gt, dets = _scene(seed)
    metric = _metric(tmp_path, gt, dets, backend)
    metric.compute()
    rows = {r["category_id"]: r for r in metric.per_class()}
    assert list(rows) == [2, 5, 7, 11]  # category-id order, every category
    evaluated = np.concatenate(list(metric.detections().values()))
    assert len(evaluated) == sum(len(d) for d in dets.values())
    for cat in (2, 7, 11):
        ref = _pycocotools_per_category(gt, evaluated, cat)
        got = [rows[cat]["AP"], rows[cat]["AP50"], rows[cat]["AR100"]]
        # pycocotools' stats: 0 = AP .50:.95, 1 = AP50, 8 = AR100
        np.testing.assert_allclose(
            got, [ref[0], ref[1], ref[8]], rtol=0, atol=0 if backend == "pycocotools" else 1e-6
        )
        direct = sum(1 for a in gt["annotations"] if a["category_id"] == cat and not a["iscrowd"])
        assert rows[cat]["gt_boxes"] == direct
    assert rows[5]["AP"] is None and rows[5]["gt_boxes"] == 0  # no ground truth: no AP
    assert rows[11]["name"] == "kiwi"


def test_per_class_with_no_detection_is_zero_where_there_is_ground_truth(tmp_path):
    gt, dets = _scene(3)
    metric = _metric(tmp_path, gt, {k: v[:0] for k, v in dets.items()}, "pycocotools")
    assert metric.compute()["mAP"] == 0.0
    rows = {r["category_id"]: r for r in metric.per_class()}
    assert rows[5]["AP"] is None
    assert all(rows[c]["AP"] == 0.0 and rows[c]["gt_boxes"] > 0 for c in (2, 7, 11))


# --- confusion matrix: hand-made boxes, counted by hand ----------------------------------------


def _box(x1, y1, x2, y2):
    return [x1, y1, x2 - x1, y2 - y1]


HAND_GT = {
    "images": [
        {"id": 1, "width": 200, "height": 200, "file_name": "1.jpg"},
        {"id": 2, "width": 200, "height": 200, "file_name": "2.jpg"},
    ],
    "annotations": [
        # image 1: A (1), B (2), C (3) and a crowd region of class 1
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": _box(0, 0, 10, 10), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": _box(20, 20, 30, 30), "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": _box(40, 40, 50, 50), "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": _box(60, 60, 90, 90), "iscrowd": 1},
        # image 2: D (1)
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": _box(0, 0, 10, 10), "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 3, "name": "three"}],
}


def _rows(img_id, boxes):
    """metric rows [img, x, y, w, h, score, cat] from (x1, y1, x2, y2, score, cat)."""
    return np.asarray(
        [[img_id, x1, y1, x2 - x1, y2 - y1, s, c] for x1, y1, x2, y2, s, c in boxes], np.float64
    ).reshape(-1, 7)


HAND_DETS = {
    1: _rows(
        1,
        [
            (0, 0, 10, 10, 0.9, 1),  # d1 on A, class 1: correct
            (1, 0, 11, 10, 0.8, 1),  # d2 A again: A is taken -> false positive
            (20, 20, 30, 30, 0.7, 3),  # d3 on B as class 3: confused (2 -> 3)
            (20, 20, 30, 30, 0.2, 2),  # d4 below the score threshold: not counted
            (65, 65, 85, 85, 0.6, 2),  # d5 inside the crowd region: ignored
            (100, 100, 110, 110, 0.5, 2),
        ],
    ),  # d6 on nothing: false positive
    # image 2: the wrong class scores higher, but the right one (IoU 0.82) keeps D
    2: _rows(2, [(0, 0, 10, 10, 0.9, 2), (1, 0, 11, 10, 0.5, 1)]),
}


def test_confusion_matrix_equals_a_count_by_hand():
    matches = er.match_all(HAND_GT, HAND_DETS, iou_threshold=0.5, score_threshold=0.3)
    cm = er.confusion_matrix(matches, [1, 2, 3])
    # rows: gt one, two, three, background; columns: predicted one, two, three, background
    expected = np.array(
        [
            [2, 0, 0, 0],  # A and D found as "one"
            [0, 0, 1, 0],  # B taken for "three"
            [0, 0, 0, 1],  # C missed
            [1, 2, 0, 0],
        ]
    )  # d2 ("one"); d6 and image 2's "two"
    np.testing.assert_array_equal(cm, expected)
    by_id = {m.img_id: m for m in matches}
    assert (by_id[1].false_positives, by_id[1].missed) == (3, 2)  # d2 d3 d6; B C
    assert (by_id[2].false_positives, by_id[2].missed) == (1, 0)
    assert [m.img_id for m in er.worst_images(matches, 5)] == [1, 2]
    assert [m.img_id for m in er.worst_images(matches, 1)] == [1]


def test_confusion_matrix_thresholds():
    # score 0.95: no detection is left -> A, B, C and D all missed
    cm = er.confusion_matrix(er.match_all(HAND_GT, HAND_DETS, 0.5, 0.95), [1, 2, 3])
    np.testing.assert_array_equal(cm, [[0, 0, 0, 2], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    # IoU 0.9: image 2's class-1 box (IoU 0.82) no longer matches; the class-2 box (IoU 1)
    # takes D as a confusion
    cm = er.confusion_matrix(er.match_all(HAND_GT, HAND_DETS, 0.9, 0.3), [1, 2, 3])
    assert cm[0, 1] == 1 and cm[3, 0] == 2  # D -> two; d2 and image 2's "one" on background


def test_correct_counts_equal_cocos_true_positives():
    """Step 1 of the matching is COCO's: its correct detections are pycocotools' true
    positives at IoU 0.5 (score threshold 0: every detection)."""
    gt, dets = _scene(4)
    rows = {
        i: np.concatenate(
            [np.full((len(d), 1), i), d[:, :2], d[:, 2:4] - d[:, :2], d[:, 4:]], axis=1
        )
        for i, d in dets.items()
    }
    matches = er.match_all(gt, rows, 0.5, 0.0)
    ours = sum(int(m.correct.sum()) for m in matches)
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(np.concatenate(list(rows.values()))), "bbox")
        ev.params.maxDets = [1, 10, 10_000]
        ev.evaluate()
    tps = 0
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        matched = e["dtMatches"][0] > 0  # IoU 0.5
        tps += int((matched & ~e["dtIgnore"][0]).sum())
    assert ours == tps > 0


# --- figures -----------------------------------------------------------------------------------


def _content(path, size=None):
    img = Image.open(path)
    assert img.format == "PNG"
    if size is not None:
        assert img.size == size
    arr = np.asarray(img.convert("RGB")).astype(np.int64)
    assert arr.std() > 10  # not a blank canvas
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20
    return img, arr


def test_figures_have_content(tmp_path):
    gt, dets = _scene(5)
    metric = _metric(tmp_path, gt, dets, "pycocotools")
    metric.compute()
    names = metric.category_names()
    pr = er.plot_pr_curves(tmp_path / "pr.png", metric.evaluation, names, "test")
    _content(pr, (4 * 320, 2 * 280))  # 5 panels (all + 4 classes) on a 4-column grid
    assert Image.open(pr).info.get("Software") == "test"
    curves = er.pr_curves(metric.evaluation)
    assert curves["classes"][5] is None  # no ground truth: "no ground truth" panel
    at50, mean = curves["classes"][11]
    assert at50.shape == (101,) and np.all(at50 >= mean - 1e-12)  # IoU .5 is the loosest
    matches = er.match_all(metric.gt, metric.detections(), 0.5, 0.3)
    cm = er.confusion_matrix(matches, metric.cat_ids)
    labels = [names[c] for c in metric.cat_ids]
    path = er.plot_confusion(tmp_path / "cm.png", cm, labels, "test", 0.5, 0.3)
    _content(path)
    csv_rows = tmp_path / "cm.csv"
    er.write_confusion_csv(csv_rows, cm, labels)
    lines = csv_rows.read_text().splitlines()
    assert lines[0].split(",")[1:] == [*labels, "background"]
    assert [int(v) for v in lines[1].split(",")[1:]] == cm[0].tolist()


def test_worst_images_are_drawn_in_original_pixels(tmp_path):
    matches = er.match_all(HAND_GT, HAND_DETS, 0.5, 0.3)
    worst = er.worst_images(matches, 2)
    rgb = np.full((200, 200, 3), 128, np.uint8)
    read = {1: rgb, 2: None}.get  # image 2 cannot be read: listed, not drawn
    out = er.write_worst_images(tmp_path, worst, {1: "one", 2: "two", 3: "three"}, read)
    assert out[0] == {
        "rank": 1,
        "img_id": 1,
        "false_positives": 3,
        "missed": 2,
        "gt_boxes": 3,
        "detections": 4,
        "file": "01_img1.png",
    }
    assert "file" not in out[1]
    img = np.asarray(Image.open(tmp_path / "01_img1.png").convert("RGB"))
    k = er.DRAW_MIN_SIDE // 200  # small images are enlarged by a whole factor
    assert img.shape == (200 * k, 200 * k, 3)
    # C (40..50) missed: orange outline; d6 (100..110) a false positive: red outline
    assert tuple(img[45 * k, 40 * k]) == er.MISSED_COLOUR
    assert tuple(img[105 * k, 100 * k]) == er.WRONG_COLOUR
    assert tuple(img[150 * k, 150 * k]) == (128, 128, 128)  # untouched background
