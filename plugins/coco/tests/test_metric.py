"""COCODetectionMetric equals a direct pycocotools COCOeval run; faster-coco-eval within 1e-6."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.coco_eval import STAT_KEYS
from fcos_plugin_coco.metric import COCODetectionMetric

CATS = [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}, {"id": 17, "name": "m"}]
CAT_ORDER = [3, 17, 90]  # label i = i-th smallest id


def _q(x):
    """Round to a multiple of 1/4 so scaling by 2 or 0.5 and shifting are exact in float32."""
    return np.round(np.asarray(x) * 4) / 4


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    rng = np.random.default_rng(7)
    images, anns, dets = [], [], []
    for i in range(8):
        w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        iid = 1000 + 7 * i
        images.append({"id": iid, "file_name": f"{iid}.jpg", "width": w, "height": h})
        n_gt = 0 if i == 5 else int(rng.integers(1, 7))
        for k in range(n_gt):
            bw, bh = _q(rng.uniform(8, w / 2)), _q(rng.uniform(8, h / 2))
            x, y = _q(rng.uniform(0, w - bw)), _q(rng.uniform(0, h - bh))
            cat = int(rng.choice(CAT_ORDER))
            crowd = int(k == 3)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": cat,
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": crowd,
                }
            )
            if i == 2:
                continue  # an image with objects but no detections
            jit = _q(rng.normal(0, 3, 4))
            x1, y1 = np.clip([x + jit[0], y + jit[1]], 0, [w - 2, h - 2])
            x2, y2 = np.clip([x + bw + jit[2], y + bh + jit[3]], [x1 + 1, y1 + 1], [w, h])
            label = CAT_ORDER.index(cat) if rng.random() < 0.85 else int(rng.integers(3))
            dets.append((iid, x1, y1, x2, y2, float(np.float32(rng.uniform(0.3, 1))), label))
        if i != 2:
            for _ in range(int(rng.integers(0, 4))):  # false positives
                x1, y1 = _q(rng.uniform(0, w - 20)), _q(rng.uniform(0, h - 20))
                x2, y2 = _q(x1 + rng.uniform(5, 19)), _q(y1 + rng.uniform(5, 19))
                dets.append(
                    (
                        iid,
                        x1,
                        y1,
                        x2,
                        y2,
                        float(np.float32(rng.uniform(0.05, 0.5))),
                        int(rng.integers(3)),
                    )
                )
    path = tmp_path_factory.mktemp("metric") / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    assert any(a["iscrowd"] for a in anns)
    return str(path), images, dets


def _reference(ann_file, dets, backend="pycocotools"):
    """COCOeval run directly on the detections, in original pixels, from the json file."""
    results = [
        {
            "image_id": d[0],
            "category_id": CAT_ORDER[d[6]],
            "bbox": [
                float(d[1]),
                float(d[2]),
                float(d[3]) - float(d[1]),
                float(d[4]) - float(d[2]),
            ],
            "score": d[5],
        }
        for d in dets
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO(ann_file)
            ev = COCOeval(gt, gt.loadRes(results), "bbox")
        else:
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(ann_file)
            ev = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=print)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def _batches(images, dets, batch_size=3):
    """Batches in the network-input frame: each image scaled and cropped differently."""
    scales = [(2.0, 2.0), (0.5, 0.5), (1.0, 2.0), (0.25, 0.5)]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        sf, off, outs = [], [], []
        for j, img in enumerate(chunk):
            s = np.array(scales[(start + j) % 4], np.float32)
            o = np.array([(start + j) % 3 * 4.0, (start + j) % 2 * 8.0], np.float32)
            mine = [d for d in dets if d[0] == img["id"]]
            boxes = np.array([d[1:5] for d in mine], np.float64).reshape(-1, 4)
            cur = boxes * np.tile(s, 2) - np.tile(o, 2)
            outs.append(
                {
                    "boxes": torch.tensor(cur, dtype=torch.float32),
                    "scores": torch.tensor([d[5] for d in mine], dtype=torch.float32),
                    "labels": torch.tensor([d[6] for d in mine], dtype=torch.int64),
                }
            )
            sf.append(s)
            off.append(o)
        batch = {
            "img_id": [im["id"] for im in chunk],
            "ori_shape": [(im["height"], im["width"]) for im in chunk],
            "scale_factor": torch.tensor(np.stack(sf)),
            "crop_offset": torch.tensor(np.stack(off)),
        }
        yield batch, outs


def _run(metric, images, dets):
    metric.reset()
    for batch, outs in _batches(images, dets):
        metric.update(batch, outs)
    return metric.compute()


def test_equals_pycocotools_exactly(fixture_data):
    ann_file, images, dets = fixture_data
    ref = _reference(ann_file, dets)
    got = _run(COCODetectionMetric(ann_file, backend="pycocotools"), images, dets)
    assert list(got) == list(STAT_KEYS)
    assert [got[k] for k in STAT_KEYS] == ref.tolist()  # exact
    assert 0.05 < got["mAP"] < 0.95  # a meaningful, non-trivial fixture


def test_faster_coco_eval_within_1e6(fixture_data):
    pytest.importorskip("faster_coco_eval")
    ann_file, images, dets = fixture_data
    ref = _reference(ann_file, dets)
    metric = COCODetectionMetric(ann_file)  # auto picks the fast backend when installed
    assert metric.backend == "faster_coco_eval"
    got = _run(metric, images, dets)
    np.testing.assert_allclose([got[k] for k in STAT_KEYS], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_reference(ann_file, dets, "faster"), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_empty_predictions_give_zeros(fixture_data, backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    ann_file, images, _ = fixture_data
    got = _run(COCODetectionMetric(ann_file, backend=backend), images, [])
    assert got == dict.fromkeys(STAT_KEYS, 0.0)
    assert COCODetectionMetric(ann_file, backend=backend).compute()["mAP"] == 0.0


def test_subset_and_duplicates(fixture_data):
    """Only seen images are evaluated; an image seen twice (sampler padding) counts once."""
    ann_file, images, dets = fixture_data
    subset = images[:3]
    sub_dets = [d for d in dets if d[0] in {im["id"] for im in subset}]
    metric = COCODetectionMetric(ann_file, backend="pycocotools")
    for batch, outs in _batches(subset + subset[:1], sub_dets):
        metric.update(batch, outs)
    from fcos_plugin_coco.coco_eval import evaluate_bbox

    rows = np.array(
        [[d[0], d[1], d[2], d[3] - d[1], d[4] - d[2], d[5], CAT_ORDER[d[6]]] for d in sub_dets]
    )
    ref = evaluate_bbox(json.loads(Path(ann_file).read_text()), rows, [im["id"] for im in subset])
    assert [metric.compute()[k] for k in STAT_KEYS] == ref.tolist()


def test_bad_updates(fixture_data, tmp_path):
    ann_file, images, _ = fixture_data
    metric = COCODetectionMetric(ann_file, backend="pycocotools")
    batch = {"img_id": [images[0]["id"]], "ori_shape": [(10, 10)], "scale_factor": torch.ones(1, 2)}
    out = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([3])}
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        metric.update(batch, [out])
    batch["img_id"] = [12345]
    with pytest.raises(FcosUserError, match="12345"):
        metric.update(batch, [dict(out, labels=torch.tensor([0]))])
    with pytest.raises(FcosUserError, match="does not exist"):
        COCODetectionMetric(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="backend"):
        COCODetectionMetric(ann_file, backend="other")


def _dist_worker(rank, world, init, ann_file, images, dets, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        metric = COCODetectionMetric(ann_file, backend="pycocotools")
        mine = images[rank::world] + images[:1]  # image 0 on both ranks, like padding
        ids = {im["id"] for im in mine}
        for batch, outs in _batches(mine, [d for d in dets if d[0] in ids]):
            metric.update(batch, outs)
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(metric.compute(), f)
    finally:
        dist.destroy_process_group()


def test_distributed_gather(fixture_data, tmp_path):
    ann_file, images, dets = fixture_data
    init = f"file://{tmp_path / 'pg'}"
    # fork: the worker lives in this test module, which spawn could not import by name
    torch.multiprocessing.start_processes(
        _dist_worker,
        args=(2, init, ann_file, images, dets, str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    ref = _reference(ann_file, dets).tolist()
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert [got[k] for k in STAT_KEYS] == ref
