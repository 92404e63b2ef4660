"""The OpenCV transforms against independent slow references, plus determinism and aliasing.

Tolerances (levels of 0..255 unless said otherwise), and why:

* Resize, bilinear (enlarging, or shrinking to >= 1/2): within 1 of torch's bilinear
  (``align_corners=False``, no antialias) and, when enlarging, of PIL's BILINEAR (the same filter
  there): OpenCV interpolates in 11-bit fixed point, the references in float.
* Resize below 1/2: within 1 of an exact area average computed in float64 (``INTER_AREA``).
* AugmentHSV: OpenCV's 8-bit HSV quantizes hue to 256 steps per circle and saturation / value
  to 8 bits, and the lookup tables floor; against ``colorsys`` in float the error is < 1 level
  on average and at most a few levels on saturated colours (PIL's 8-bit HSV, used before,
  errs as much: measured in the test). The hue gain multiplies the hue *angle* (YOLO's
  table), which is discontinuous at 0/360 degrees: pixels within one hue step of red are left
  out of the gain comparison (8-bit quantization may put them on either side).
* YUV: the fast path rounds the same float32 formula as ``rgb_to_yuv444``; only a value within
  float32 noise of a .5 tie can round the other way: at most 1 level, on <= 1e-3 of values.
"""

from __future__ import annotations

import colorsys
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fcos_plugin_coco.transforms._cv import cv2, scratch
from fcos_plugin_coco.transforms.crop import RandomCrop
from fcos_plugin_coco.transforms.flip import RandomFlip
from fcos_plugin_coco.transforms.fused import ToTensorNormalize, fuse
from fcos_plugin_coco.transforms.hsv import AugmentHSV
from fcos_plugin_coco.transforms.pad import Pad
from fcos_plugin_coco.transforms.resize import Resize, resize_image
from fcos_plugin_coco.transforms.tensor import Normalize, ToTensor, rgb_to_yuv444


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 1.0)


# --- Resize --------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 1.37, 0.8, 0.55, 0.5])
@pytest.mark.parametrize("noise", [False, True])
def test_resize_bilinear_matches_torch_and_pil(factor, noise):
    rng = np.random.default_rng(int(factor * 100))
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) if noise else _smooth(rng, 60, 80)
    nh, nw = int(60 * factor + 0.5), int(80 * factor + 0.5)
    got = resize_image(img, nh, nw).astype(int)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = F.interpolate(t, (nh, nw), mode="bilinear", align_corners=False, antialias=False)
    ref = ref[0].permute(1, 2, 0).round().numpy().astype(int)
    assert np.abs(got - ref).max() <= 1
    if factor > 1:  # PIL's BILINEAR is plain bilinear when enlarging
        pil = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR)).astype(int)
        assert np.abs(got - pil).max() <= 1


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    s = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        a, b = o * s, (o + 1) * s
        for i in range(int(np.floor(a)), min(n_in, int(np.ceil(b)))):
            w[o, i] = max(0.0, min(b, i + 1) - max(a, i))
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("factor", [0.45, 0.3, 0.17])
def test_resize_below_half_is_an_area_average(factor):
    img = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    nh, nw = int(60 * factor + 0.5), int(80 * factor + 0.5)
    got = resize_image(img, nh, nw).astype(float)
    ref = np.einsum(
        "oi,ijc,pj->opc", _area_weights(60, nh), img.astype(float), _area_weights(80, nw)
    )
    assert np.abs(got - ref).max() <= 1.0


def test_resize_crop_is_bit_identical_to_the_pair_at_photo_sizes():
    """ResizeCrop resamples only the top-left part it needs when enlarging (same fx / fy as the
    full resize): the pixels must equal Resize then RandomCrop exactly."""
    from fcos_plugin_coco.transforms.fused import ResizeCrop

    rng = np.random.default_rng(12)
    for i in range(40):
        h, w = int(rng.integers(40, 640)), int(rng.integers(40, 640))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        s = {
            "img": img,
            "gt_bboxes": np.zeros((0, 4), np.float32),
            "gt_classes": np.zeros(0, np.int64),
        }
        size = int(rng.integers(16, 512))
        resize, crop = Resize((size, size), (0.5, 2.0)), RandomCrop((size, size))
        np.random.seed(i)
        ref = crop(resize(s))["img"]
        np.random.seed(i)
        np.testing.assert_array_equal(ResizeCrop(resize, crop)(s)["img"], ref)


def test_resize_into_scratch_equals_a_new_array():
    img = _smooth(np.random.default_rng(2), 37, 53)
    for nh, nw in ((37, 53), (70, 101), (20, 30), (9, 12)):
        dst = scratch("test_resize", (nh, nw, 3))
        np.testing.assert_array_equal(resize_image(img, nh, nw, dst=dst), resize_image(img, nh, nw))


# --- AugmentHSV ----------------------------------------------------------------------------


def _colorsys_hsv(img: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float reference of the gains (hue angle * r0 mod 360, s and v * r clipped), and each
    pixel's hue in [0, 1)."""
    out = np.empty(img.shape, np.float64)
    hue = np.empty(img.shape[:2], np.float64)
    for idx in np.ndindex(*img.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(img[idx] / 255.0))
        hue[idx] = h
        rgb = colorsys.hsv_to_rgb((h * r[0]) % 1.0, min(s * r[1], 1.0), min(v * r[2], 1.0))
        out[idx] = np.array(rgb) * 255.0
    return out, hue


def _pil_hsv(img: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The previous implementation's numbers: PIL's 8-bit HSV with the same tables."""
    planes = Image.fromarray(img).convert("HSV").split()
    hsv = Image.merge("HSV", [p.point(t.tolist()) for p, t in zip(planes, AugmentHSV.tables(r))])
    return np.asarray(hsv.convert("RGB")).astype(np.float64)


def test_augment_hsv_gains_zero_is_the_identity():
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    s = {"img": img}
    assert AugmentHSV(0, 0, 0)(s) is s


def test_augment_hsv_unit_gains_round_trip_within_8bit_quantization():
    """r = (1, 1, 1): identity tables, so only the RGB -> HSV -> RGB quantization remains;
    colorsys (float) gives the image back exactly."""
    img = np.random.default_rng(4).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    r = np.ones(3)
    ref, _ = _colorsys_hsv(img, r)
    np.testing.assert_allclose(ref, img, atol=1e-9)
    err = np.abs(AugmentHSV.apply(img, r) - ref)
    err_pil = np.abs(_pil_hsv(img, r) - ref)
    assert err.mean() < 0.7 and err.max() <= 8, (err.mean(), err.max())
    assert err.mean() <= err_pil.mean() + 0.1  # no worse than PIL's 8-bit round trip
    # greys and red (hue 0) survive exactly; 120 / 240 degrees are not on the 256-step circle
    exact = np.array(
        [[[0, 0, 0], [255, 255, 255], [77, 77, 77], [255, 0, 0], [90, 0, 0]]], np.uint8
    )
    np.testing.assert_array_equal(AugmentHSV.apply(exact, r), exact)


@pytest.mark.parametrize(
    "r", [(1.015, 1.7, 0.6), (0.985, 0.3, 1.4), (1.0, 1.0, 1.4), (1.3, 0.5, 0.8)]
)
def test_augment_hsv_fixed_gains_match_a_float_reference(r):
    r = np.array(r)
    img = np.random.default_rng(5).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    ref, hue = _colorsys_hsv(img, r)
    got = AugmentHSV.apply(img, r).astype(np.float64)
    away = np.minimum(hue, 1.0 - hue) > 1.5 / 256  # not at the 0/360 discontinuity
    err = np.abs(got - ref)[away]
    err_pil = np.abs(_pil_hsv(img, r) - ref)[away]
    assert err.mean() < 1.0 and np.percentile(err, 99) <= 7 and err.max() <= 16, (
        err.mean(),
        np.percentile(err, 99),
        err.max(),
    )
    assert err.mean() <= err_pil.mean() + 0.1


def test_augment_hsv_only_touches_the_valid_area_and_copies():
    rng = np.random.default_rng(6)
    img = np.full((20, 24, 3), 9, np.uint8)
    img[:15, :17] = rng.integers(0, 256, (15, 17, 3))
    keep = img.copy()
    np.random.seed(0)
    out = AugmentHSV(0.015, 0.7, 0.4)({"img": img, "img_shape": (15, 17)})["img"]
    np.random.seed(0)
    r = np.random.uniform(-1, 1, 3) * np.array([0.015, 0.7, 0.4]) + 1
    np.testing.assert_array_equal(out[:15, :17], AugmentHSV.apply(img[:15, :17].copy(), r))
    assert (out[15:] == 9).all() and (out[:, 17:] == 9).all()
    np.testing.assert_array_equal(img, keep)  # the input is not modified


# --- ToTensor / Normalize ------------------------------------------------------------------


def _all_colours(step: int) -> np.ndarray:
    v = np.arange(0, 256, step, dtype=np.uint8)
    if v[-1] != 255:
        v = np.append(v, np.uint8(255))
    r, g, b = np.meshgrid(v, v, v, indexing="ij")
    return np.stack([r, g, b], -1).reshape(len(v), -1, 3)


def test_to_tensor_yuv_equals_the_float_reference():
    img = _all_colours(3)  # 87^3 colours, the extremes included
    got = ToTensor(to_yuv=True)({"img": img})["img"]
    ref = rgb_to_yuv444(torch.from_numpy(img.transpose(2, 0, 1).copy()).float())
    diff = (got - ref).abs()
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3, (diff > 0).float().mean()
    assert got.min() >= 0 and got.max() <= 255 and torch.equal(got, got.round())
    grey = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1)[None]
    g = ToTensor(to_yuv=True)({"img": grey})["img"]
    assert torch.equal(g[0, 0], torch.arange(256, dtype=torch.float32))
    assert (g[1:] == 128).all()


def test_to_tensor_rgb_and_views():
    img = np.random.default_rng(7).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    for view in (img, img[3:17, 5:25], img[:, ::-1]):
        got = ToTensor()({"img": view})["img"]
        assert torch.equal(
            got, torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))).float()
        )
    # non-uint8 input keeps the plain float path
    f = img.astype(np.float32) + 0.25
    assert torch.equal(ToTensor()({"img": f})["img"], torch.from_numpy(f.transpose(2, 0, 1)))


@pytest.mark.parametrize("to_yuv", [False, True])
@pytest.mark.parametrize(
    "mean, std", [(128.0, 128.0), ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]), (0.0, 1.0)]
)
def test_to_tensor_normalize_is_bit_identical_to_the_pair(to_yuv, mean, std):
    img = np.random.default_rng(8).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    sample = {
        "img": img,
        "gt_bboxes": np.array([[1, 2, 3, 4]], np.float32),
        "gt_classes": np.array([2]),
    }
    tt, nz = ToTensor(to_yuv), Normalize(mean, std)
    ref = nz(tt(sample))
    got = ToTensorNormalize(tt, nz)(sample)
    assert torch.equal(got["img"], ref["img"])
    assert torch.equal(got["gt_bboxes"], ref["gt_bboxes"])
    assert got["gt_classes"].dtype == torch.int64


# --- the chain: determinism, fused == unfused, outputs never alias scratch memory ---------


def _chain(size: int) -> list:
    return [
        Resize((size, size), ratio_range=(0.5, 2.0)),
        RandomCrop((size, size)),
        Pad(divisor=size),
        RandomFlip(0.5, 0.5),
        AugmentHSV(0.015, 0.7, 0.4),
        ToTensor(to_yuv=True),
        Normalize(128.0, 128.0),
    ]


def _run(transforms: list, samples: list[dict], seed: int) -> list[dict]:
    np.random.seed(seed)
    outs = []
    for s in samples:
        for t in transforms:
            s = t(s)
        outs.append(s)
    return outs


def test_fixed_seed_is_deterministic_and_fused_equals_unfused():
    rng = np.random.default_rng(9)
    samples = []
    for h, w in ((48, 64), (64, 40), (30, 30), (80, 96)):
        samples.append(
            {
                "img": _smooth(rng, h, w),
                "gt_bboxes": np.array([[2, 3, w - 5, h - 4]], np.float32),
                "gt_classes": np.array([1]),
                "img_shape": (h, w),
            }
        )
    a = _run(fuse(_chain(40)), samples, 3)
    b = _run(fuse(_chain(40)), samples, 3)
    c = _run(_chain(40), samples, 3)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["img"], z["img"])
        assert torch.equal(x["gt_bboxes"], z["gt_bboxes"])
        assert x["img"].shape == (3, 40, 40)
    d = _run(fuse(_chain(40)), samples, 4)
    assert not all(torch.equal(x["img"], y["img"]) for x, y in zip(a, d))


def test_outputs_do_not_alias_scratch_memory():
    rng = np.random.default_rng(10)
    s1 = {"img": _smooth(rng, 50, 60), "img_shape": (50, 60)}
    s2 = {"img": _smooth(rng, 50, 60), "img_shape": (50, 60)}
    np.random.seed(0)
    steps = fuse(
        [
            Resize((64, 64), ratio_range=(1.5, 2.0)),
            RandomCrop((48, 48)),
            AugmentHSV(0.015, 0.7, 0.4),
        ]
    )
    o1 = s1
    for t in steps:
        o1 = t(o1)
    keep = o1["img"].copy()
    o2 = s2
    for t in steps:
        o2 = t(o2)
    np.testing.assert_array_equal(o1["img"], keep)
    t1 = ToTensor(True)(o1)["img"]
    t1c = t1.clone()
    ToTensor(True)(o2)
    assert torch.equal(t1, t1c)


def test_flip_and_pad_equal_numpy():
    rng = np.random.default_rng(11)
    img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    out = Pad(size=(16, 24), pad_val=7)({"img": img})
    ref = np.full((16, 24, 3), 7, np.uint8)
    ref[:13, :17] = img
    np.testing.assert_array_equal(out["img"], ref)
    for px, py, flip in (
        (1.0, 0.0, lambda a: a[:, ::-1]),
        (0.0, 1.0, lambda a: a[::-1]),
        (1.0, 1.0, lambda a: a[::-1, ::-1]),
    ):
        got = RandomFlip(px, py)(dict(out))["img"]
        want = ref.copy()
        want[:13, :17] = flip(img)
        np.testing.assert_array_equal(got, want)


def test_opencv_runs_single_threaded_unless_told_otherwise():
    code = "import cv2; import fcos_plugin_coco.transforms.resize; print(cv2.getNumThreads())"
    env = {k: v for k, v in os.environ.items() if k != "FCOS_CV2_THREADS"}
    one = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert one == "1"  # setNumThreads(0): no pool, every call in the calling thread
    two = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "FCOS_CV2_THREADS": "2"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert two == "2"
