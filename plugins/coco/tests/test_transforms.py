"""Transforms keep boxes and pixels consistent (hypothesis property tests), plus argument checks.

A box is painted white on a black image; after a transform the white pixels must sit exactly
(crop, pad, flip) or within interpolation blur (resize) where the transformed box says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fcos_plugin_coco.transforms._cv import cv2
from fcos_plugin_coco.transforms.crop import RandomCrop
from fcos_plugin_coco.transforms.flip import RandomFlip
from fcos_plugin_coco.transforms.hsv import AugmentHSV
from fcos_plugin_coco.transforms.pad import Pad
from fcos_plugin_coco.transforms.resize import Resize
from fcos_plugin_coco.transforms.tensor import Normalize, ToTensor, rgb_to_yuv444

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def painted(draw):
    """A sample with one white integer box on black, plus a seed for the transform."""
    h, w = draw(st.integers(8, 72)), draw(st.integers(8, 72))
    x1 = draw(st.integers(0, w - 3))
    y1 = draw(st.integers(0, h - 3))
    x2 = draw(st.integers(x1 + 2, w))
    y2 = draw(st.integers(y1 + 2, h))
    img = np.zeros((h, w, 3), np.uint8)
    img[y1:y2, x1:x2] = 255
    sample = {
        "img": img,
        "gt_bboxes": np.array([[x1, y1, x2, y2]], np.float32),
        "gt_classes": np.array([4], np.int64),
        "img_id": 1,
        "ori_shape": (h, w),
        "img_shape": (h, w),
        "pad_shape": (h, w),
        "scale_factor": np.ones(2, np.float32),
    }
    return sample, draw(st.integers(0, 2**31 - 1))


def white_box(img: np.ndarray, thresh: int = 255):
    ys, xs = np.nonzero(img[..., 0] >= thresh)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def check_state(out: dict) -> None:
    h, w = out["img"].shape[:2]
    assert out["pad_shape"] == (h, w)
    ih, iw = out["img_shape"]
    assert 0 <= ih <= h and 0 <= iw <= w
    b = out["gt_bboxes"]
    assert b.dtype == np.float32 and len(b) == len(out["gt_classes"])
    assert (
        (b[:, 0] >= 0).all()
        and (b[:, 2] <= w).all()
        and (b[:, 1] >= 0).all()
        and (b[:, 3] <= h).all()
    )


@SETTINGS
@given(
    painted(),
    st.integers(8, 64),
    st.integers(8, 64),
    st.booleans(),
    st.sampled_from([None, (0.5, 2.0)]),
)
def test_resize(data, th, tw, keep_ratio, ratio_range):
    sample, seed = data
    np.random.seed(seed)
    out = Resize((th, tw), ratio_range, keep_ratio)(sample)
    check_state(out)
    h, w = out["img"].shape[:2]
    sx, sy = out["scale_factor"]
    assert abs(sx * sample["img"].shape[1] - w) < 1e-3
    assert abs(sy * sample["img"].shape[0] - h) < 1e-3
    if keep_ratio and ratio_range is None:
        assert max(h, w) <= max(th, tw) + 0.5 and min(h, w) <= min(th, tw) + 0.5
        assert max(h, w) >= max(th, tw) - 1 or min(h, w) >= min(th, tw) - 1
    if not keep_ratio and ratio_range is None:
        assert (h, w) == (th, tw)
    box = out["gt_bboxes"][0]
    if min(box[2] - box[0], box[3] - box[1]) >= 3:
        seen = white_box(out["img"], 128)
        assert seen is not None
        # bilinear (area averaging below half size) blurs edges by at most about one pixel
        assert np.abs(seen - box).max() <= 1.0 + 1e-3, (seen, box)
    # mapping back with scale_factor recovers the original box
    back = out["gt_bboxes"] / np.tile(out["scale_factor"], 2)
    np.testing.assert_allclose(back, sample["gt_bboxes"], atol=1e-3)


@SETTINGS
@given(painted(), st.integers(4, 80), st.integers(4, 80))
def test_random_crop(data, ch, cw):
    sample, seed = data
    np.random.seed(seed)
    out = RandomCrop((ch, cw))(sample)
    check_state(out)
    h, w = out["img"].shape[:2]
    assert (h, w) == (min(ch, sample["img"].shape[0]), min(cw, sample["img"].shape[1]))
    seen = white_box(out["img"])
    if len(out["gt_bboxes"]) == 0:
        assert seen is None and len(out["gt_classes"]) == 0  # box cropped away: dropped
    else:
        np.testing.assert_array_equal(seen, out["gt_bboxes"][0])
        assert out["gt_classes"].tolist() == [4]
        # (current + crop_offset) / scale = original, for the part inside the window
        ox, oy = out["crop_offset"]
        orig = out["gt_bboxes"][0] + np.array([ox, oy, ox, oy])
        window = np.array([ox, oy, ox + w, oy + h])
        ref = sample["gt_bboxes"][0].copy()
        ref[:2] = np.maximum(ref[:2], window[:2])
        ref[2:] = np.minimum(ref[2:], window[2:])
        np.testing.assert_array_equal(orig, ref)


@SETTINGS
@given(painted(), st.integers(1, 32), st.booleans())
def test_pad(data, divisor, by_size):
    sample, _ = data
    h, w = sample["img"].shape[:2]
    pad = Pad(size=(h + divisor, w + 2 * divisor)) if by_size else Pad(divisor=divisor)
    out = pad(sample)
    check_state(out)
    ph, pw = out["img"].shape[:2]
    if by_size:
        assert (ph, pw) == (h + divisor, w + 2 * divisor)
    else:
        assert ph % divisor == 0 and pw % divisor == 0 and ph - h < divisor and pw - w < divisor
    assert out["img_shape"] == (h, w)
    np.testing.assert_array_equal(out["img"][:h, :w], sample["img"])
    assert (out["img"][h:] == 0).all() and (out["img"][:, w:] == 0).all()
    np.testing.assert_array_equal(white_box(out["img"]), out["gt_bboxes"][0])


@SETTINGS
@given(painted(), st.floats(0, 1), st.floats(0, 1), st.integers(0, 16))
def test_random_flip(data, px, py, extra):
    sample, seed = data
    sample = Pad(size=(sample["img"].shape[0] + extra, sample["img"].shape[1] + extra))(sample)
    np.random.seed(seed)
    out = RandomFlip(px, py)(sample)
    check_state(out)
    np.testing.assert_array_equal(white_box(out["img"]), out["gt_bboxes"][0])
    h, w = sample["img_shape"]
    assert (out["img"][h:] == 0).all() and (out["img"][:, w:] == 0).all()  # padding stays


def test_flip_always_and_never(helpers):
    img = np.zeros((10, 20, 3), np.uint8)
    img[2:5, 1:4] = 255
    s = {
        "img": img,
        "gt_bboxes": np.array([[1, 2, 4, 5]], np.float32),
        "gt_classes": np.array([0]),
        "img_shape": (10, 20),
    }
    out = RandomFlip(1.0, 1.0)(s)
    assert out["gt_bboxes"].tolist() == [[16, 5, 19, 8]]
    np.testing.assert_array_equal(out["img"], img[::-1, ::-1])
    assert RandomFlip(0.0, 0.0)(s) is s


@SETTINGS
@given(painted())
def test_train_chain_maps_back_to_the_original(data):
    """Resize -> RandomCrop -> Pad: boxes fully inside the crop map back exactly."""
    sample, seed = data
    np.random.seed(seed)
    out = sample
    for t in (Resize((48, 48), (0.5, 2.0)), RandomCrop((32, 32)), Pad(divisor=32)):
        out = t(out)
    check_state(out)
    if len(out["gt_bboxes"]):
        off = np.tile(out.get("crop_offset", np.zeros(2, np.float32)), 2)
        back = (out["gt_bboxes"][0] + off) / np.tile(out["scale_factor"], 2)
        ref = sample["gt_bboxes"][0]
        # inside the window the coordinates agree; clipped sides move inwards only
        assert (back[:2] >= ref[:2] - 1e-3).all() and (back[2:] <= ref[2:] + 1e-3).all()


@SETTINGS
@given(painted(), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_augment_hsv_keeps_geometry(data, hg, sg, vg):
    sample, seed = data
    np.random.seed(seed)
    out = AugmentHSV(hg, sg, vg)(sample)
    assert out["img"].shape == sample["img"].shape and out["img"].dtype == np.uint8
    np.testing.assert_array_equal(out["gt_bboxes"], sample["gt_bboxes"])


def test_augment_hsv_changes_colour_within_gains():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (16, 16, 3)).astype(np.uint8)
    s = {"img": img}
    assert AugmentHSV(0, 0, 0)(s) is s
    np.random.seed(1)
    out = AugmentHSV(0.0, 0.0, 0.4)(s)["img"]
    v_in = np.asarray(Image.fromarray(img).convert("HSV"))[..., 2].astype(float)
    v_out = np.asarray(Image.fromarray(out).convert("HSV"))[..., 2].astype(float)
    np.random.seed(1)
    gain = 1 + np.random.uniform(-1, 1, 3)[2] * 0.4
    assert abs(np.median(v_out / v_in) - gain) < 0.03


def test_to_tensor_yuv_matches_pil_ycbcr():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
    out = ToTensor(to_yuv=True)(
        {"img": img, "gt_bboxes": np.zeros((0, 4), np.float32), "gt_classes": np.zeros(0, np.int64)}
    )
    ref = np.asarray(Image.fromarray(img).convert("YCbCr")).transpose(2, 0, 1).astype(np.float32)
    assert out["img"].dtype == torch.float32 and out["img"].shape == (3, 9, 11)
    assert (out["img"] - torch.from_numpy(ref)).abs().max() <= 1.0  # PIL uses fixed point
    assert out["gt_bboxes"].shape == (0, 4) and out["gt_classes"].dtype == torch.int64
    rgb = ToTensor()({"img": img})["img"]
    assert torch.equal(rgb, torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)))
    grey = torch.full((3, 2, 2), 77.0)
    np.testing.assert_allclose(rgb_to_yuv444(grey)[:, 0, 0], [77, 128, 128])


def test_normalize():
    img = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2)
    out = Normalize(128.0, 128.0)({"img": img})["img"]
    assert torch.allclose(out, (img - 128) / 128)
    out = Normalize([1, 2, 3], [2, 4, 8])({"img": img})["img"]
    assert torch.allclose(out[2], (img[2] - 3) / 8)
    with pytest.raises(TypeError, match="ToTensor"):
        Normalize(0, 1)({"img": np.zeros((2, 2, 3))})


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Resize((0, 10)), "img_scale"),
        (lambda: Resize((10, 10), ratio_range=(2.0, 1.0)), "ratio_range"),
        (lambda: Resize((10,)), "img_scale"),
        (lambda: RandomCrop((10, -1)), "size"),
        (lambda: Pad(), "exactly one"),
        (lambda: Pad(divisor=32, size=(1, 1)), "exactly one"),
        (lambda: Pad(divisor=0), "divisor"),
        (lambda: Pad(divisor=8, pad_val=300), "pad_val"),
        (lambda: RandomFlip(1.5), "px"),
        (lambda: AugmentHSV(-0.1), "hgain"),
        (lambda: Normalize(0, [1, 2]), "std"),
        (lambda: Normalize(0, 0), "std"),
    ],
)
def test_bad_arguments_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pad_smaller_than_the_image_says_what_to_do():
    with pytest.raises(ValueError, match="Resize"):
        Pad(size=(4, 4))({"img": np.zeros((8, 8, 3), np.uint8)})


@SETTINGS
@given(
    painted(),
    st.integers(4, 64),
    st.integers(4, 64),
    st.integers(4, 64),
    st.sampled_from([None, (0.5, 2.0)]),
)
def test_fused_resize_crop_equals_the_pair(data, scale, ch, cw, ratio_range):
    from fcos_plugin_coco.transforms.fused import ResizeCrop, fuse

    sample, seed = data
    resize, crop = Resize((scale, scale), ratio_range), RandomCrop((ch, cw))
    np.random.seed(seed)
    ref = crop(resize(sample))
    np.random.seed(seed)
    got = ResizeCrop(resize, crop)(sample)
    assert got.keys() == ref.keys()
    for k in ref:
        if k == "img":
            # bit-identical: ResizeCrop resizes the whole image with the same cv2 call and crops
            # (it was within 1 level when it resampled only the window with PIL)
            np.testing.assert_array_equal(got[k], ref[k])
        elif isinstance(ref[k], np.ndarray):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        else:
            assert got[k] == ref[k], k
    pad, flip = Pad(divisor=8), RandomFlip()
    fused = fuse([resize, crop, pad, resize, flip, ToTensor(), Normalize(0, 1), ToTensor()])
    assert [type(t).__name__ for t in fused] == [
        "ResizeCrop",
        "Pad",
        "Resize",
        "RandomFlip",
        "ToTensorNormalize",
        "ToTensor",
    ]


def test_augment_hsv_leaves_padding_alone():
    rng = np.random.default_rng(0)
    img = np.full((12, 16, 3), 7, np.uint8)
    img[:8, :10] = rng.integers(30, 220, (8, 10, 3))
    s = {"img": img, "img_shape": (8, 10)}
    np.random.seed(0)
    out = AugmentHSV(0.5, 0.7, 0.4)(s)["img"]
    assert (out[8:] == 7).all() and (out[:, 10:] == 7).all()
    assert not np.array_equal(out[:8, :10], img[:8, :10])


def test_augment_hsv_tables_are_applied_in_opencv_hsv():
    """AugmentHSV = OpenCV's full-circle HSV, the three lookup tables, back to RGB.

    (This compared against PIL's HSV before the switch to OpenCV: both quantize hue, saturation
    and value to 8 bits but round differently, so single pixels now differ from PIL's by a few
    levels; tests/test_transforms_reference.py checks both against a float colorsys reference.)
    """
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (64, 48, 3)).astype(np.uint8)
    np.random.seed(3)
    got = AugmentHSV(0.5, 0.7, 0.4)({"img": img})["img"]
    np.random.seed(3)
    r = np.random.uniform(-1, 1, 3) * np.array([0.5, 0.7, 0.4]) + 1
    luts = AugmentHSV.tables(r)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    hsv = np.stack([lut[hsv[..., c]] for c, lut in enumerate(luts)], axis=-1)
    np.testing.assert_array_equal(got, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL))
