"""COCO bbox evaluation time: pycocotools against faster-coco-eval, side by side.

Synthesises a COCO-like ground truth (80 categories with COCO's non-contiguous ids 1..90,
640x480 images, ~7 objects each, some crowd) and N detections per image (jittered copies of
the objects with right or wrong classes plus random boxes), then runs the evaluation the
metric runs (:func:`fcos_plugin_coco.coco_eval.evaluate_bbox`) with each backend, checks that
the 12 numbers agree within 1e-6 and prints the times and their ratio.

    .venv/bin/python benchmarks/bench_coco_eval.py            # 5,000 images x 100 detections
    .venv/bin/python benchmarks/bench_coco_eval.py --quick    # 200 images x 20 (seconds)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy/torch start OpenMP
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from fcos_plugin_coco.coco_eval import STAT_KEYS, evaluate_bbox, fast_backend_available

#: COCO's 80 category ids (1..90 with gaps)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke size: 200 images x 20 dets")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.images, args.dets = 200, 20
    return args


def synthesize(n_images: int, n_dets: int, seed: int) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, anns, rows = [], [], []
    for i in range(n_images):
        iid = i + 1
        w, h = 640, 480
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": w, "height": h})
        n_obj = int(rng.integers(1, 15))
        size = np.exp(rng.uniform(np.log(8), np.log(400), (n_obj, 2)))
        xy = rng.uniform(0, 1, (n_obj, 2)) * (np.array([w, h]) - size).clip(1)
        cats = rng.choice(COCO_IDS, n_obj)
        for k in range(n_obj):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": int(cats[k]),
                    "bbox": [
                        float(xy[k, 0]),
                        float(xy[k, 1]),
                        float(size[k, 0]),
                        float(size[k, 1]),
                    ],
                    "area": float(size[k, 0] * size[k, 1]),
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
        # detections: jittered objects (mostly right class) then random boxes
        src = rng.integers(0, n_obj, n_dets)
        jitter = rng.normal(0, 0.1, (n_dets, 4)) * np.tile(size[src], 2)
        box = np.concatenate([xy[src], size[src]], 1) + jitter
        rand = rng.random(n_dets) < 0.4
        box[rand] = np.concatenate(
            [rng.uniform(0, 600, (rand.sum(), 2)), rng.uniform(4, 200, (rand.sum(), 2))], 1
        )
        box[:, 2:] = box[:, 2:].clip(1)
        cls = np.where(rng.random(n_dets) < 0.8, cats[src], rng.choice(COCO_IDS, n_dets))
        score = rng.random(n_dets)
        rows.append(np.column_stack([np.full(n_dets, iid), box, score, cls]))
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in COCO_IDS],
    }
    return gt, np.concatenate(rows).astype(np.float64)


def main() -> int:
    args = parse_args()
    t = time.perf_counter()
    gt, dets = synthesize(args.images, args.dets, args.seed)
    print(
        f"{args.images} images, {len(gt['annotations'])} objects, {len(dets)} detections "
        f"(synthesised in {time.perf_counter() - t:.1f} s)"
    )
    results = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        if backend == "faster_coco_eval" and not fast_backend_available():
            print("faster_coco_eval: not installed (pip install 'fcos-plugin-coco[fast]')")
            continue
        t = time.perf_counter()
        stats = evaluate_bbox(gt, dets, backend=backend)
        results[backend] = (time.perf_counter() - t, stats)
    print(f"\n{'backend':<18}{'seconds':>10}{'mAP':>10}{'AP50':>10}{'AR100':>10}")
    for backend, (sec, stats) in results.items():
        print(f"{backend:<18}{sec:>10.2f}{stats[0]:>10.4f}{stats[1]:>10.4f}{stats[8]:>10.4f}")
    if len(results) == 2:
        (t_ref, s_ref), (t_fast, s_fast) = results["pycocotools"], results["faster_coco_eval"]
        diff = float(np.abs(s_ref - s_fast).max())
        print(
            f"ratio pycocotools / faster_coco_eval: {t_ref / t_fast:.1f}x; max |difference| "
            f"over the 12 numbers ({', '.join(STAT_KEYS)}): {diff:.2e}"
        )
        if diff > 1e-6:
            print("MISMATCH: the backends disagree by more than 1e-6")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
