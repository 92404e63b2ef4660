"""Data pipeline throughput: decode + the seed's train transforms, per worker (one process).

Generates a COCO-like set of JPEGs (synthetic shapes scenes, 480..640 px sides, as COCO's
640x480 photos) into a temporary folder, packs it with the real packer, then times
``dataset[i]`` for the LMDB (``Coco``) and the folder (``CocoFolder``) with HAT's train
transforms at 512x512 (Resize 512 ratio 0.5-2, RandomCrop 512, Pad 512, RandomFlip, AugmentHSV,
ToTensor to_yuv, Normalize 128/128; the datasets run Resize + RandomCrop and ToTensor +
Normalize fused), plus decode alone and each transform's milliseconds per image.

Every figure is also measured, in the same run and on the same images, with BASELINE: the
previous pure PIL / numpy / torch implementation of the same transforms (kept below, clearly
labelled, only for this comparison), and printed with the ratio new / baseline.

One worker = one process with one thread everywhere: OMP_NUM_THREADS=1 and OMP_WAIT_POLICY=
PASSIVE (set before torch is imported), ``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``.

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
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 24 images, 1 pass")
    p.add_argument("--images", type=int, default=200, help="images in the generated set")
    p.add_argument(
        "--passes", type=int, default=3, help="timed passes over the set; the fastest is reported"
    )
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
from PIL import Image  # noqa: E402

from fcos_plugin_coco.dataset import Coco, CocoFolder  # noqa: E402
from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo  # noqa: E402
from fcos_plugin_coco.transforms._cv import cv2  # noqa: E402
from fcos_plugin_coco.transforms.crop import RandomCrop  # noqa: E402
from fcos_plugin_coco.transforms.flip import RandomFlip  # noqa: E402
from fcos_plugin_coco.transforms.fused import ResizeCrop, fuse  # noqa: E402
from fcos_plugin_coco.transforms.hsv import AugmentHSV  # noqa: E402
from fcos_plugin_coco.transforms.pad import Pad  # noqa: E402
from fcos_plugin_coco.transforms.resize import Resize  # noqa: E402
from fcos_plugin_coco.transforms.tensor import Normalize, ToTensor, rgb_to_yuv444  # noqa: E402

TARGET = 200.0


def train_transforms(size: int) -> list:
    return [
        Resize((size, size), ratio_range=(0.5, 2.0), keep_ratio=True),
        RandomCrop((size, size)),
        Pad(divisor=size),
        RandomFlip(px=0.5, py=0.0),
        AugmentHSV(hgain=0.015, sgain=0.7, vgain=0.4),
        ToTensor(to_yuv=True),
        Normalize(mean=128.0, std=128.0),
    ]


# ============================================================================================
# BASELINE -- the previous implementation (PIL resampling, PIL HSV + numpy HSV -> RGB, numpy
# pad / flip, torch YUV matmul + Normalize), kept here only to measure the speed-up in the same
# run. Same random draws and book-keeping (it reuses the package's size / window / box code);
# only the pixel work is the old one. Not used anywhere else.
# ============================================================================================

_X = np.arange(256, dtype=np.float64)


def _baseline_hexcone() -> np.ndarray:
    h6 = _X * 6.0 / 255.0
    sector = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    table = {
        0: ("v", "t", "p"),
        1: ("q", "v", "p"),
        2: ("p", "v", "t"),
        3: ("p", "q", "v"),
        4: ("t", "p", "v"),
        5: ("v", "p", "q"),
    }
    g = np.zeros((3, 256))
    for i in range(256):
        for c, name in enumerate(table[sector[i]]):
            g[c, i] = {"v": 0.0, "q": f[i], "p": 1.0, "t": 1.0 - f[i]}[name]
    return g


_BASELINE_G = _baseline_hexcone()


class BaselineResizeCrop(ResizeCrop):
    """BASELINE: Resize + RandomCrop fused, PIL resampling only the window (``box=``)."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        h, w = img.shape[:2]
        out, nh, nw, oy, ox, ch, cw = self.draw(sample)
        if (nh, nw) == (h, w):
            out["img"] = np.ascontiguousarray(img[oy : oy + ch, ox : ox + cw])
        else:
            sx, sy = w / nw, h / nh
            box = (ox * sx, oy * sy, (ox + cw) * sx, (oy + ch) * sy)
            out["img"] = np.asarray(Image.fromarray(img).resize((cw, ch), Image.BILINEAR, box=box))
        return out


class BaselinePad(Pad):
    """BASELINE: numpy canvas + copy."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["img"]
        h, w = img.shape[:2]
        th, tw = self.target_size(h, w)
        out = dict(sample)
        if (th, tw) != (h, w):
            padded = np.full((th, tw, *img.shape[2:]), self.pad_val, dtype=img.dtype)
            padded[:h, :w] = img
            out["img"] = padded
        out["pad_shape"] = (th, tw)
        out.setdefault("img_shape", (h, w))
        return out


class BaselineRandomFlip(RandomFlip):
    """BASELINE: numpy reversed-view copies."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        flip_x, flip_y = self.draw()
        if not (flip_x or flip_y):
            return sample
        img = sample["img"]
        vh, vw = sample.get("img_shape", img.shape[:2])
        out = dict(sample)
        new = img.copy()
        boxes = np.asarray(sample["gt_bboxes"], np.float32).reshape(-1, 4).copy()
        if flip_x:
            new[:vh, :vw] = new[:vh, :vw][:, ::-1]
            boxes[:, [0, 2]] = vw - boxes[:, [2, 0]]
        if flip_y:
            new[:vh, :vw] = new[:vh, :vw][::-1]
            boxes[:, [1, 3]] = vh - boxes[:, [3, 1]]
        out["img"], out["gt_bboxes"] = new, boxes
        return out


class BaselineAugmentHSV(AugmentHSV):
    """BASELINE: PIL RGB -> HSV, the same tables by numpy indexing, PIL's HSV -> RGB formula
    in numpy."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        r = self.draw()
        if r is None:
            return sample
        img = sample["img"]
        vh, vw = sample.get("img_shape", img.shape[:2])
        hsv = np.asarray(Image.fromarray(img[:vh, :vw]).convert("HSV"))
        lut_h, lut_s, lut_v = self.tables(r)
        h = lut_h[hsv[..., 0]]
        s_frac = (lut_s / np.float32(255)).astype(np.float32)[hsv[..., 1]]
        v = lut_v.astype(np.float32)[hsv[..., 2]]
        a = v * s_frac
        rgb = np.empty((*h.shape, 3), dtype=np.uint8)
        for c in range(3):
            rgb[..., c] = v - a * _BASELINE_G[c].astype(np.float32)[h] + 0.5
        out = dict(sample)
        if (vh, vw) == img.shape[:2]:
            out["img"] = rgb
        else:
            new = img.copy()
            new[:vh, :vw] = rgb
            out["img"] = new
        return out


class BaselineToTensor(ToTensor):
    """BASELINE: transpose copy, float tensor, torch 3x3 matmul, round, clamp."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        t = torch.from_numpy(np.ascontiguousarray(sample["img"].transpose(2, 0, 1)))
        t = t.to(torch.float32)
        out["img"] = rgb_to_yuv444(t) if self.to_yuv else t
        out["gt_bboxes"] = torch.as_tensor(np.asarray(sample["gt_bboxes"], np.float32))
        out["gt_classes"] = torch.as_tensor(np.asarray(sample["gt_classes"], np.int64))
        return out


def baseline_transforms(size: int) -> list:
    """BASELINE: the same parameters as :func:`train_transforms`, the old pixel code
    (Normalize's tensor code is unchanged, so it is the package's; nothing here is fused by
    the datasets: the old datasets fused Resize + RandomCrop, as BaselineResizeCrop does)."""
    t = train_transforms(size)
    return [
        BaselineResizeCrop(t[0], t[1]),
        BaselinePad(divisor=size),
        BaselineRandomFlip(px=0.5, py=0.0),
        BaselineAugmentHSV(0.015, 0.7, 0.4),
        BaselineToTensor(to_yuv=True),
        Normalize(mean=128.0, std=128.0),
    ]


# ============================================================================================
# measurement
# ============================================================================================

#: stage name of each transform class, so new and baseline rows line up
STAGES = {
    "ResizeCrop": "Resize+RandomCrop",
    "BaselineResizeCrop": "Resize+RandomCrop",
    "Pad": "Pad",
    "BaselinePad": "Pad",
    "RandomFlip": "RandomFlip",
    "BaselineRandomFlip": "RandomFlip",
    "AugmentHSV": "AugmentHSV",
    "BaselineAugmentHSV": "AugmentHSV",
    "ToTensorNormalize": "ToTensor+Normalize",
    "BaselineToTensor": "ToTensor+Normalize",
    "Normalize": "ToTensor+Normalize",
}


def rate(ds, transforms: list, passes: int) -> tuple[float, float]:
    """Best images/s of ``dataset[i]`` over ``passes`` full passes (after a warm-up pass), by
    wall clock and by this process's CPU time (what a worker with a core of its own would do;
    the two differ when other jobs share the cores)."""
    ds.transforms = transforms
    for i in range(len(ds)):
        ds[i]
    wall, cpu = [], []
    for _ in range(passes):
        np.random.seed(0)
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(ds)):
            ds[i]
        wall.append(len(ds) / (time.perf_counter() - t))
        cpu.append(len(ds) / max(time.process_time() - c, 1e-9))
    return max(wall), max(cpu)


def stage_ms(ds, transforms: list, passes: int) -> dict[str, float]:
    """Milliseconds per image in decoding and in each stage (``transforms`` as the dataset runs
    them, i.e. fused): the mean over the set, fastest of ``passes`` passes after a warm-up."""
    ds.transforms = []
    best: dict[str, float] = {}
    for p in range(passes + 1):
        cost: dict[str, list[float]] = {"decode": []}
        np.random.seed(0)
        for i in range(len(ds)):
            t0 = time.perf_counter()
            sample = ds[i]
            cost["decode"].append(time.perf_counter() - t0)
            per = dict.fromkeys(STAGES.values(), 0.0)
            for t in transforms:
                t0 = time.perf_counter()
                sample = t(sample)
                per[STAGES[type(t).__name__]] += time.perf_counter() - t0
            for k, v in per.items():
                cost.setdefault(k, []).append(v)
        if p:  # pass 0 warms up
            for k, v in cost.items():
                best[k] = min(best.get(k, float("inf")), 1000 * statistics.mean(v))
    return best


def agreement(ds, new: list, base: list, n: int = 16) -> float:
    """Mean |new - baseline| of the output image, in 8-bit levels, same random draws."""
    diffs = []
    ds.transforms = []
    for i in range(min(n, len(ds))):
        raw = ds[i]
        np.random.seed(i)
        a = raw
        for t in fuse(new):
            a = t(a)
        np.random.seed(i)
        b = raw
        for t in base:
            b = t(b)
        diffs.append(float((a["img"] - b["img"]).abs().mean()) * 128)
    return statistics.mean(diffs)


def main() -> int:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    preload = os.environ.get("LD_PRELOAD")
    print(
        f"torch {torch.__version__}, opencv {cv2.__version__}, 1 thread "
        f"(torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}), "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"{'LD_PRELOAD=' + preload if preload else 'glibc malloc'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ensure_demo(
            tmp,
            DemoParams(
                num_train=ARGS.images,
                num_val=1,
                image_size=ARGS.source_size,
                min_object=16,
                max_object=ARGS.source_size // 2,
            ),
        )
        print(
            f"generated + packed {ARGS.images} JPEGs ({int(ARGS.source_size * 0.75)}.."
            f"{ARGS.source_size} px sides) in {time.perf_counter() - t:.1f} s"
        )
        lmdb_ds = Coco(os.path.join(tmp, "train_lmdb"))
        folder_ds = CocoFolder(
            os.path.join(tmp, "images", "train"), os.path.join(tmp, "instances_train.json")
        )
        new, base = train_transforms(ARGS.size), baseline_transforms(ARGS.size)
        lmdb_ds.transforms = new
        out = lmdb_ds[0]["img"]
        assert tuple(out.shape) == (3, ARGS.size, ARGS.size), out.shape
        rows = []
        for name, ds in (("LMDB (Coco)", lmdb_ds), ("folder (CocoFolder)", folder_ds)):
            decode = rate(ds, [], ARGS.passes)
            fast = rate(ds, new, ARGS.passes)
            slow = rate(ds, base, ARGS.passes)
            rows.append((name, decode, fast, slow))
        print(
            f"\nimages/s, 1 worker, {ARGS.size}x{ARGS.size} output, fastest of {ARGS.passes} "
            f"pass(es) over {ARGS.images} images (wall clock; CPU time in brackets):"
        )
        print(
            f"{'source':<22}{'decode only':>16}{'decode+transforms':>22}{'BASELINE':>18}"
            f"{'ratio':>8}"
        )
        for name, decode, fast, slow in rows:
            ok = "meets" if fast[0] >= TARGET else "BELOW"
            print(
                f"{name:<22}{decode[0]:>7.1f} ({decode[1]:>6.1f}){fast[0]:>13.1f} "
                f"({fast[1]:>6.1f}){slow[0]:>9.1f} ({slow[1]:>5.1f}){fast[0] / slow[0]:>7.2f}x"
                f"  {ok} the {TARGET:.0f}/s target"
            )
        print(
            f"ratio LMDB / folder: decode {rows[0][1][0] / rows[1][1][0]:.2f}x, "
            f"full {rows[0][2][0] / rows[1][2][0]:.2f}x"
        )

        ms_new = stage_ms(lmdb_ds, fuse(new), ARGS.passes)
        ms_base = stage_ms(lmdb_ds, base, ARGS.passes)
        print(f"\nms per image (LMDB; mean over the set, fastest of {ARGS.passes} pass(es)):")
        print(f"{'stage':<22}{'new':>8}{'BASELINE':>10}{'ratio':>8}")
        for k in ms_new:
            print(
                f"{k:<22}{ms_new[k]:>8.2f}{ms_base[k]:>10.2f}"
                f"{ms_base[k] / max(ms_new[k], 1e-9):>7.1f}x"
            )
        tn, tb = sum(ms_new.values()), sum(ms_base.values())
        print(
            f"{'total':<22}{tn:>8.2f}{tb:>10.2f}{tb / tn:>7.1f}x"
            f"   (= {1000 / tn:.0f} vs {1000 / tb:.0f} images/s)"
        )
        print(
            f"\noutput agreement, same random draws: mean |new - BASELINE| = "
            f"{agreement(lmdb_ds, new, base):.2f} levels of 255 (bilinear without PIL's "
            "antialias between 1/2 and 1x, 8-bit HSV rounding)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
