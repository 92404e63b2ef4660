"""Write the demo dataset: COCO jsons + JPEGs, packed into LMDBs by the real packer.

Layout of ``root``::

    images/train/*.jpg   images/val/*.jpg
    instances_train.json instances_val.json      (category ids 1, 3, 5, 7, 9)
    train_lmdb/          val_lmdb/               (+ *.summary.json next to them)
    .fcos-demo.json      marker with the parameters, written last

Deterministic: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split,
i])``, so the same parameters give the same bytes. :func:`ensure_demo` is idempotent and safe
when several processes (DDP ranks, DataLoader workers) call it at once: an exclusive lock file
serialises them, images and jsons are written to a temporary folder and renamed into place,
and the marker is written last (a generation cut short is redone by the next call).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import time
from typing import Any, Iterator, Optional

import attrs
import numpy as np
from PIL import Image

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.demo.shapes import CLASSES, render_scene

MARKER = ".fcos-demo.json"
LOCK = ".fcos-demo.lock"
_TMP_PREFIX = ".fcos-demo-tmp-"
_SPLITS = (("train", 0), ("val", 1))
#: categories are written in this (unsorted) order so readers must sort the ids themselves
_JSON_CAT_ORDER = (7, 1, 9, 3, 5)


def _positive(name: str):
    def check(inst: Any, attribute: Any, value: int) -> None:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return check


@attrs.frozen(kw_only=True)
class DemoParams:
    """Size and seed of the demo dataset (the ``fcos demo-data`` options)."""

    num_train: int = attrs.field(default=2000, validator=_positive("num_train"))
    num_val: int = attrs.field(default=200, validator=_positive("num_val"))
    image_size: int = attrs.field(default=128, validator=_positive("image_size"))
    min_object: int = attrs.field(default=10, validator=_positive("min_object"))
    max_object: int = attrs.field(default=64, validator=_positive("max_object"))
    max_objects: int = attrs.field(default=5, validator=_positive("max_objects"))
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.min_object > self.max_object:
            raise ValueError(f"min_object ({self.min_object}) must be <= max_object "
                             f"({self.max_object})")
        if self.min_object * 4 > self.image_size * 3:
            raise ValueError(f"min_object ({self.min_object}) must fit in 3/4 of image_size "
                             f"({self.image_size})")


#: parameters used by ``demo_if_missing`` and as the command's defaults: 128x128 images keep
#: the whole demo pipeline (float training from scratch, calibration, QAT, integer model,
#: compile) within about 15 minutes on 2 CPU cores while the task stays a real one
DEFAULT_PARAMS = DemoParams()


def categories() -> list[dict[str, Any]]:
    by_id = {cid: name for cid, name, _ in CLASSES}
    return [{"id": cid, "name": by_id[cid], "supercategory": "shape"} for cid in _JSON_CAT_ORDER]


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """Each side is ``size`` half of the time, else 3/4..1 of it (even): keep_ratio matters."""
    def side() -> int:
        return size if rng.random() < 0.5 else max(32, int(size * rng.uniform(0.75, 1.0)) // 2 * 2)
    return side(), side()


def write_split(root: str, split: str, code: int, count: int, p: DemoParams) -> str:
    """Render ``count`` images into ``root/images/<split>`` and write the split's json."""
    img_dir = os.path.join(root, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        rng = np.random.default_rng([p.seed, code, i])
        w, h = _image_size(rng, p.image_size)
        pixels, objs = render_scene(rng, w, h, p.min_object, p.max_object, p.max_objects)
        image_id = i + 1
        name = f"{image_id:06d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(buf.getvalue())
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for obj in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **obj})
    data = {
        "info": {"description": "fcos synthetic shapes demo", "version": "1",
                 "params": attrs.asdict(p)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories(),
    }
    path = os.path.join(root, f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@contextlib.contextmanager
def _exclusive(lock_path: str, timeout_s: float = 1800.0) -> Iterator[None]:
    """An exclusive inter-process lock (flock; an O_EXCL lock file where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        with open(lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return
    deadline = time.monotonic() + timeout_s  # pragma: no cover - non-POSIX
    while True:  # pragma: no cover
        try:
            fd = os.open(lock_path + ".x", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise FcosUserError(f"timed out waiting for {lock_path}.x",
                                    hint="delete it if no other fcos process is running")
            time.sleep(0.5)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        os.remove(lock_path + ".x")


def _read_marker(root: str) -> Optional[dict]:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def ensure_demo(root: str, params: Optional[DemoParams] = None, *, force: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Make sure ``root`` holds the demo dataset for ``params``; returns the marker content.

    Returns at once when it is already there. A demo made with other parameters is an error
    unless ``force``. Any other existing target (e.g. a half-written one) is replaced.
    """
    from fcos_plugin_coco.packer import pack_coco

    params = params if params is not None else DEFAULT_PARAMS
    root = os.path.abspath(root)
    wanted = {"format": "fcos-demo", "version": 1, "params": attrs.asdict(params)}
    marker = _read_marker(root)
    if marker == wanted:
        return marker
    os.makedirs(root, exist_ok=True)
    with _exclusive(os.path.join(root, LOCK)):
        marker = _read_marker(root)
        if marker == wanted:
            return marker  # another process made it while we waited
        if marker is not None and not force:
            raise FcosUserError(f"{root} holds demo data made with other settings "
                                f"({marker.get('params')})",
                                hint="pass --force to regenerate it, or use another folder")
        for stale in glob.glob(os.path.join(root, _TMP_PREFIX + "*")):
            _remove(stale)
        _remove(os.path.join(root, MARKER))
        tmp = os.path.join(root, f"{_TMP_PREFIX}{os.getpid()}")
        os.makedirs(tmp)
        try:
            counts = {"train": params.num_train, "val": params.num_val}
            for split, code in _SPLITS:
                write_split(tmp, split, code, counts[split], params)
            for name in ("images", "instances_train.json", "instances_val.json"):
                _remove(os.path.join(root, name))
                os.replace(os.path.join(tmp, name), os.path.join(root, name))
            for split, _ in _SPLITS:
                # packed in place: readers refuse an LMDB without its completion key, and the
                # marker (written last) makes the next call redo an interrupted generation
                out = os.path.join(root, f"{split}_lmdb")
                _remove(out)
                pack_coco(os.path.join(root, "images", split),
                          os.path.join(root, f"instances_{split}.json"), out,
                          split_name=split, on_error="stop", progress=progress)
        finally:
            _remove(tmp)
        tmp_marker = os.path.join(root, MARKER + f".tmp{os.getpid()}")
        with open(tmp_marker, "w") as f:
            json.dump(wanted, f)
        os.replace(tmp_marker, os.path.join(root, MARKER))
    return wanted
