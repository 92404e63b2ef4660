"""Shared fixtures: small COCO-format folders generated in tmp_path."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image


def jpeg_bytes(arr: np.ndarray, mode: str = "RGB", quality: int = 92, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random image with some structure (JPEG-friendly)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            (xx * 255 // max(w - 1, 1)),
            (yy * 255 // max(h - 1, 1)),
            np.full_like(xx, rng.integers(0, 255)),
        ],
        -1,
    )
    noise = rng.integers(0, 40, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_coco(
    root: str,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict],
    files: dict[str, bytes],
) -> tuple[str, str]:
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(data)
    ann = os.path.join(root, "instances.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return img_dir, ann


#: non-contiguous, unsorted in the json on purpose
CATEGORIES = [{"id": 11, "name": "kiwi"}, {"id": 2, "name": "apple"}, {"id": 7, "name": "pear"}]


@pytest.fixture
def clean_coco(tmp_path) -> Callable[..., tuple[str, str]]:
    """A clean 6-image COCO folder (varied sizes, crowd boxes, an image with no box)."""

    def make(n: int = 6, seed: int = 0) -> tuple[str, str]:
        rng = np.random.default_rng(seed)
        images, anns, files = [], [], {}
        for i in range(n):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            name = f"img_{i}.jpg"
            files[name] = jpeg_bytes(scene(rng, h, w))
            images.append({"id": 100 + i * 3, "file_name": name, "width": w, "height": h})
            for k in range(0 if i == 1 else int(rng.integers(1, 4))):
                x0, y0 = float(rng.uniform(0, w - 12)), float(rng.uniform(0, h - 12))
                bw, bh = float(rng.uniform(4, w - x0)), float(rng.uniform(4, h - y0))
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": 100 + i * 3,
                        "category_id": CATEGORIES[int(rng.integers(3))]["id"],
                        "bbox": [x0, y0, bw, bh],
                        "area": bw * bh,
                        "iscrowd": int(k == 2),
                    }
                )
        root = os.path.join(tmp_path, f"clean{seed}")
        return write_coco(root, images, anns, CATEGORIES, files)

    return make


@pytest.fixture
def helpers():
    """The helper functions above (test modules cannot import conftest with importlib mode)."""
    import types

    return types.SimpleNamespace(
        jpeg_bytes=jpeg_bytes, scene=scene, write_coco=write_coco, categories=CATEGORIES
    )
