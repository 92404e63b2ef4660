"""Synthetic shapes scenes: one image and its COCO annotations from a seeded generator.

Five classes, each a shape with its own colour family (hue jitter, varied saturation and
brightness): circle (red), square (green), triangle (blue), ring (yellow), cross (magenta).
Category ids are 1, 3, 5, 7, 9 (non-contiguous on purpose). A scene has a textured background
(noise, gradient or stripes), distractors of random colour that are not class shapes
(elongated ellipses, irregular blobs, lines; some drawn over the objects), 1..N objects with
sizes log-uniform in [min_object, max_object] that may occlude each other (at most ~40% of an
earlier object), sometimes a crowd of tiny same-class shapes annotated as one ``iscrowd``
region, and mild sensor noise. Boxes are the tight box of each object's *visible* pixels and
``area`` is its visible pixel count, as in COCO.
"""

from __future__ import annotations

import colorsys
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: (category id, name, hue in degrees)
CLASSES: tuple[tuple[int, str, float], ...] = (
    (1, "circle", 0.0),
    (3, "square", 120.0),
    (5, "triangle", 225.0),
    (7, "ring", 50.0),
    (9, "cross", 300.0),
)
_MAX_OCCLUDED = 0.4  # a new object may hide at most this share of an earlier one


def _colour(rng: np.random.Generator, hue_deg: float) -> tuple[int, int, int]:
    h = ((hue_deg + rng.uniform(-14, 14)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _muted(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.2, 0.9))
    return np.array([r, g, b], dtype=np.float32) * 255


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    c0, c1 = _muted(rng), _muted(rng)
    angle = rng.uniform(0, math.pi)
    # broadcasting [1, W] + [H, 1] is cheaper than a full meshgrid
    proj = np.arange(w, dtype=np.float32)[None, :] * math.cos(angle) + np.arange(
        h, dtype=np.float32
    )[:, None] * math.sin(angle)
    if kind == 0:  # flat colour with coarse noise
        coarse = rng.standard_normal((h // 8 + 1, w // 8 + 1, 3), dtype=np.float32) * 18
        img = c0 + np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w]
    elif kind == 1:  # linear gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    else:  # stripes
        period = rng.uniform(6, 40)
        t = (np.sin(proj * 2 * math.pi / period) > 0).astype(np.float32)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return img.astype(np.float32)


def _rotated(
    points: list[tuple[float, float]], cx: float, cy: float, angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_mask(
    name: str, cx: float, cy: float, size: float, angle: float, hw: tuple[int, int]
) -> np.ndarray:
    """Boolean [H, W] mask of one shape whose extent is about ``size`` pixels."""
    h, w = hw
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    r = size / 2
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=max(2, round(size * 0.2)))
    elif name == "square":
        a = r / (abs(math.cos(angle)) + abs(math.sin(angle)))
        d.polygon(_rotated([(-a, -a), (a, -a), (a, a), (-a, a)], cx, cy, angle), fill=255)
    elif name == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        pts = [(r * math.cos(a), r * math.sin(a)) for a in corners]
        d.polygon([(cx + x, cy + y) for x, y in pts], fill=255)
    elif name == "cross":
        t = r * 0.32
        arm = [
            (-t, -r),
            (t, -r),
            (t, -t),
            (r, -t),
            (r, t),
            (t, t),
            (t, r),
            (-t, r),
            (-t, t),
            (-r, t),
            (-r, -t),
            (-t, -t),
        ]
        d.polygon(_rotated([(x * 0.9, y * 0.9) for x, y in arm], cx, cy, angle), fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(im) > 0


def _distractor_mask(
    rng: np.random.Generator, hw: tuple[int, int], max_size: float, thin: bool
) -> np.ndarray:
    h, w = hw
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    size = rng.uniform(min(8.0, max_size), max_size)  # small max_object: max_size below 8
    kind = 2 if thin else rng.integers(3)
    if kind == 0:  # elongated ellipse: never a circle
        a, b = size / 2, size / 2 * rng.uniform(0.15, 0.5)
        pts = [(a * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24)]
        d.polygon(_rotated(pts, cx, cy, rng.uniform(0, math.pi)), fill=255)
    elif kind == 1:  # irregular blob
        n = int(rng.integers(6, 10))
        pts = [
            (
                size / 2 * rng.uniform(0.4, 1.0) * math.cos(2 * math.pi * k / n),
                size / 2 * rng.uniform(0.4, 1.0) * math.sin(2 * math.pi * k / n),
            )
            for k in range(n)
        ]
        d.polygon([(cx + x, cy + y) for x, y in pts], fill=255)
    else:  # line
        ang = rng.uniform(0, math.pi)
        dx, dy = math.cos(ang) * size, math.sin(ang) * size
        d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=int(rng.integers(1, 4)))
    return np.asarray(im) > 0


def _random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _paint(
    img: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], rng: np.random.Generator
) -> None:
    # slight shading inside the shape so pixels are not one flat value
    shade = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img[mask] = np.asarray(rgb, dtype=np.float32) * shade


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    min_object: float,
    max_object: float,
    max_objects: int,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image (uint8 [H, W, 3] RGB) and its annotations (``category_id``, ``bbox`` xywh,
    ``area``, ``iscrowd``; ids are added by the caller)."""
    hw = (height, width)
    img = _background(rng, height, width)
    owner = np.full(hw, -1, dtype=np.int32)  # which object each pixel shows
    full_area: list[int] = []
    objects: list[tuple[int, int]] = []  # (category id, crowd flag)

    def place(mask: np.ndarray, cat: int, crowd: int, rgb: Any) -> bool:
        k = len(objects)
        covered = np.bincount(owner[mask & (owner >= 0)], minlength=k)
        visible = np.bincount(owner[owner >= 0], minlength=k)
        if k and np.any(covered > _MAX_OCCLUDED * np.maximum(visible, 1)):
            return False
        if rgb is not None:
            _paint(img, mask, rgb, rng)
        owner[mask] = k
        objects.append((cat, crowd))
        full_area.append(int(mask.sum()))
        return True

    for _ in range(int(rng.integers(0, 4))):  # distractors under the objects
        _paint(img, _distractor_mask(rng, hw, max_object * 0.8, thin=False), _random_rgb(rng), rng)

    if rng.random() < 0.08:  # a crowd: tiny shapes of one class, one ignore region
        cat, name, hue = CLASSES[int(rng.integers(len(CLASSES)))]
        region = rng.uniform(36, 64)
        x0, y0 = rng.uniform(0, max(1, width - region)), rng.uniform(0, max(1, height - region))
        crowd_mask = np.zeros(hw, dtype=bool)
        for _ in range(int(rng.integers(5, 10))):
            s = rng.uniform(6, 10)
            m = _shape_mask(
                name,
                x0 + rng.uniform(s / 2, region - s / 2),
                y0 + rng.uniform(s / 2, region - s / 2),
                s,
                rng.uniform(0, math.pi),
                hw,
            )
            _paint(img, m, _colour(rng, hue), rng)
            crowd_mask |= m
        place(crowd_mask, cat, 1, None)

    n_obj = int(rng.integers(1, max_objects + 1))
    lo = math.log(min_object)
    # an image side can be smaller than min_object / 0.9: then every object is min_object
    hi = max(lo, math.log(min(max_object, 0.9 * min(width, height))))
    for _ in range(n_obj):
        cat, name, hue = CLASSES[int(rng.integers(len(CLASSES)))]
        for _attempt in range(20):
            size = math.exp(rng.uniform(lo, hi))
            cx = rng.uniform(size * 0.3, width - size * 0.3)  # may be partly cut by the border
            cy = rng.uniform(size * 0.3, height - size * 0.3)
            mask = _shape_mask(name, cx, cy, size, rng.uniform(0, 2 * math.pi), hw)
            if mask.sum() >= 16 and place(mask, cat, 0, _colour(rng, hue)):
                break

    for _ in range(int(rng.integers(0, 3))):  # thin lines over everything (occluders)
        m = _distractor_mask(rng, hw, max_object * 0.6, thin=True)
        _paint(img, m, _random_rgb(rng), rng)
        owner[m] = -1

    img += rng.standard_normal(img.shape, dtype=np.float32) * 3.0
    anns = []
    for k, (cat, crowd) in enumerate(objects):
        ys, xs = np.nonzero(owner == k)
        if len(xs) == 0:
            continue  # hidden completely by the lines: nothing to annotate
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append(
            {
                "category_id": cat,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(len(xs)),
                "iscrowd": crowd,
            }
        )
    return np.clip(img, 0, 255).astype(np.uint8), anns
