"""Data pipeline throughput: decode + the seed's train transforms, per worker (one process).

Generates a COCO-like set of JPEGs (synthetic shapes scenes, 480..640 px sides, as COCO's
640x480 photos) into a temporary folder, packs it with the real packer, then times
``dataset[i]`` for the LMDB (``Coco``) and the folder (``CocoFolder``) with HAT's train
transforms at 512x512 (Resize 512 ratio 0.5-2, RandomCrop 512, Pad 512, RandomFlip, AugmentHSV,
ToTensor to_yuv, Normalize 128/128; the datasets run Resize + RandomCrop fused), plus decode
alone and each transform's share.

    .venv/bin/python benchmarks/bench_data.py            # 200 images, 3 passes
    .venv/bin/python benchmarks/bench_data.py --quick    # smoke test (seconds)

Target (issue 5): >= 200 images/s per worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 24 images, 1 pass")
    p.add_argument("--images", type=int, default=200, help="images in the generated set")
    p.add_argument("--passes", type=int, default=3,
                   help="timed passes over the set; the fastest is reported")
    p.add_argument("--size", type=int, default=512, help="train input size (HAT: 512)")
    p.add_argument("--source-size", type=int, default=640, help="longest side of the JPEGs")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.passes = 24, 1
    return args


ARGS = parse_args()
# before torch is imported: one thread per worker, no OpenMP busy-waiting on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fcos_plugin_coco.dataset import Coco, CocoFolder  # noqa: E402
from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo  # noqa: E402
from fcos_plugin_coco.transforms.crop import RandomCrop  # noqa: E402
from fcos_plugin_coco.transforms.flip import RandomFlip  # noqa: E402
from fcos_plugin_coco.transforms.fused import fuse  # noqa: E402
from fcos_plugin_coco.transforms.hsv import AugmentHSV  # noqa: E402
from fcos_plugin_coco.transforms.pad import Pad  # noqa: E402
from fcos_plugin_coco.transforms.resize import Resize  # noqa: E402
from fcos_plugin_coco.transforms.tensor import Normalize, ToTensor  # noqa: E402

TARGET = 200.0


def train_transforms(size: int) -> list:
    return [Resize((size, size), ratio_range=(0.5, 2.0), keep_ratio=True),
            RandomCrop((size, size)), Pad(divisor=size), RandomFlip(px=0.5, py=0.0),
            AugmentHSV(hgain=0.015, sgain=0.7, vgain=0.4), ToTensor(to_yuv=True),
            Normalize(mean=128.0, std=128.0)]


def rate(ds, passes: int) -> float:
    """Best images/s over ``passes`` full passes (after one warm-up pass)."""
    for i in range(len(ds)):
        ds[i]
    best = []
    for _ in range(passes):
        np.random.seed(0)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        best.append(len(ds) / (time.perf_counter() - t))
    return max(best)


def transform_shares(ds, transforms: list) -> list[tuple[str, float]]:
    """Milliseconds per image spent in decoding and in each transform."""
    cost = {"decode": []} | {type(t).__name__: [] for t in transforms}
    saved, ds.transforms = ds.transforms, []
    np.random.seed(0)
    for i in range(len(ds)):
        t0 = time.perf_counter()
        sample = ds[i]
        cost["decode"].append(time.perf_counter() - t0)
        for t in transforms:
            t0 = time.perf_counter()
            sample = t(sample)
            cost[type(t).__name__].append(time.perf_counter() - t0)
    ds.transforms = saved
    return [(k, 1000 * statistics.mean(v)) for k, v in cost.items()]


def main() -> int:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ensure_demo(tmp, DemoParams(num_train=ARGS.images, num_val=1,
                                    image_size=ARGS.source_size, min_object=16,
                                    max_object=ARGS.source_size // 2))
        print(f"generated + packed {ARGS.images} JPEGs ({int(ARGS.source_size * 0.75)}.."
              f"{ARGS.source_size} px sides) in {time.perf_counter() - t:.1f} s")
        lmdb_ds = Coco(os.path.join(tmp, "train_lmdb"), transforms=train_transforms(ARGS.size))
        folder_ds = CocoFolder(os.path.join(tmp, "images", "train"),
                               os.path.join(tmp, "instances_train.json"),
                               transforms=train_transforms(ARGS.size))
        out = lmdb_ds[0]["img"]
        assert tuple(out.shape) == (3, ARGS.size, ARGS.size), out.shape
        rows = []
        for name, ds in (("LMDB (Coco)", lmdb_ds), ("folder (CocoFolder)", folder_ds)):
            full = rate(ds, ARGS.passes)
            saved, ds.transforms = ds.transforms, []
            decode = rate(ds, ARGS.passes)
            ds.transforms = saved
            rows.append((name, decode, full))
        print(f"\n{'source':<22}{'decode only':>14}{'decode+train transforms':>26}  (images/s, "
              f"1 worker, {ARGS.size}x{ARGS.size})")
        for name, decode, full in rows:
            ok = "meets" if full >= TARGET else "BELOW"
            print(f"{name:<22}{decode:>14.1f}{full:>26.1f}  {ok} the {TARGET:.0f}/s target")
        print(f"ratio LMDB / folder: decode {rows[0][1] / rows[1][1]:.2f}x, "
              f"full {rows[0][2] / rows[1][2]:.2f}x")
        print("\nper image (LMDB), ms: " + ", ".join(
            f"{k} {v:.2f}" for k, v in transform_shares(lmdb_ds,
                                                       fuse(train_transforms(ARGS.size)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
