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

It never deletes or overwrites what it did not create: a target that exists in a folder
without the demo's marker (or the pending marker of a generation cut short) is an error naming
it, whatever ``force`` says; ``force`` only regenerates a folder that carries the marker, and
only when its targets hold nothing but the files the demo writes.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
from PIL import Image

from fcos_core.atomic_write import write_atomically
from fcos_core.errors import FcosUserError
from fcos_plugin_coco.demo.shapes import CLASSES, render_scene

MARKER = ".fcos-demo.json"
#: written before the first target and removed after the marker: the targets are the demo's own
PENDING = ".fcos-demo-pending.json"
LOCK = ".fcos-demo.lock"
#: what the demo writes into its folder (and may therefore replace)
TARGETS = (
    "images",
    "instances_train.json",
    "instances_val.json",
    "train_lmdb",
    "val_lmdb",
    "train_lmdb.summary.json",
    "val_lmdb.summary.json",
)
_DEMO_IMAGE = re.compile(r"\d{6}\.jpg")
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
        if self.max_object < 4:
            raise ValueError(
                f"max_object must be >= 4, got {self.max_object} (a smaller shape "
                "covers under 16 pixels and is never annotated)"
            )
        if self.min_object > self.max_object:
            raise ValueError(
                f"min_object ({self.min_object}) must be <= max_object ({self.max_object})"
            )
        if self.min_object * 4 > self.image_size * 3:
            raise ValueError(
                f"min_object ({self.min_object}) must fit in 3/4 of image_size ({self.image_size})"
            )


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
        "info": {
            "description": "fcos synthetic shapes demo",
            "version": "1",
            "params": attrs.asdict(p),
        },
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
                raise FcosUserError(
                    f"timed out waiting for {lock_path}.x",
                    hint="delete it if no other fcos process is running",
                ) from None
            time.sleep(0.5)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        os.remove(lock_path + ".x")


def _read_marker(root: str) -> dict | None:
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


def _existing_targets(root: str) -> list[str]:
    return [
        os.path.join(root, name) for name in TARGETS if os.path.lexists(os.path.join(root, name))
    ]


def _foreign_files(root: str) -> list[str]:
    """Paths inside the targets that the demo does not write (a user's files)."""
    foreign: list[str] = []

    def walk(folder: str, allowed: Any) -> None:
        if os.path.islink(folder) or not os.path.isdir(folder):
            foreign.append(folder)
            return
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not allowed(name, path):
                foreign.append(path)

    images = os.path.join(root, "images")
    if os.path.lexists(images):
        walk(images, lambda name, path: name in ("train", "val"))
        for split in ("train", "val"):
            if os.path.lexists(os.path.join(images, split)):
                walk(
                    os.path.join(images, split),
                    lambda name, path: (
                        bool(_DEMO_IMAGE.fullmatch(name))
                        and os.path.isfile(path)
                        and not os.path.islink(path)
                    ),
                )
    for split in ("train", "val"):
        lmdb_dir = os.path.join(root, f"{split}_lmdb")
        if os.path.lexists(lmdb_dir):
            walk(
                lmdb_dir,
                lambda name, path: (
                    name in ("data.mdb", "lock.mdb")
                    and os.path.isfile(path)
                    and not os.path.islink(path)
                ),
            )
    for name in (
        "instances_train.json",
        "instances_val.json",
        "train_lmdb.summary.json",
        "val_lmdb.summary.json",
    ):
        path = os.path.join(root, name)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            foreign.append(path)
    return foreign


def _listing(paths: list[str], limit: int = 8) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _refuse_foreign(root: str, own: bool) -> None:
    """Raise unless every existing target in ``root`` is the demo's own (``own``: the folder
    carries the demo's marker or pending marker) and holds only files the demo writes."""
    existing = _existing_targets(root)
    if not existing:
        return
    if not own:
        raise FcosUserError(
            f"{root} already holds {_listing(existing)}, not written by `fcos demo-data` (no "
            f"{MARKER} marker); the demo data would replace them, so nothing was written",
            hint="choose an empty or new folder for the demo data (--out, or the parent folder "
            "of data_path/ann_file with demo_if_missing), or move these files away; "
            "--force does not replace files the demo did not create",
        )
    foreign = _foreign_files(root)
    if foreign:
        raise FcosUserError(
            f"{root} holds demo data plus files the demo did not write: {_listing(foreign)}; "
            "regenerating would delete them, so nothing was changed",
            hint="move these files out of the demo folder, or use another folder",
        )


def ensure_demo(
    root: str, params: DemoParams | None = None, *, force: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Make sure ``root`` holds the demo dataset for ``params``; returns the marker content.

    Returns at once when it is already there. A demo made with other parameters is an error
    unless ``force``. A generation cut short (pending marker) is redone. Existing targets in a
    folder without either marker are never touched: that is an error naming them, whatever
    ``force`` says (:class:`~fcos_core.errors.FcosUserError`).
    """
    from fcos_plugin_coco.packer import pack_coco

    params = params if params is not None else DEFAULT_PARAMS
    root = os.path.abspath(root)
    wanted = {"format": "fcos-demo", "version": 1, "params": attrs.asdict(params)}
    marker = _read_marker(root)
    if marker == wanted:
        return marker
    if os.path.lexists(root) and not os.path.isdir(root):
        raise FcosUserError(
            f"{root} exists and is not a folder", hint="choose a folder path for the demo data"
        )
    own = marker is not None or os.path.lexists(os.path.join(root, PENDING))
    # checked before anything (even the lock file) is created in a folder that is not ours
    _refuse_foreign(root, own)
    os.makedirs(root, exist_ok=True)
    with _exclusive(os.path.join(root, LOCK)):
        marker = _read_marker(root)
        if marker == wanted:
            return marker  # another process made it while we waited
        if marker is not None and not force:
            raise FcosUserError(
                f"{root} holds demo data made with other settings ({marker.get('params')})",
                hint="pass --force to regenerate it, or use another folder",
            )
        _refuse_foreign(root, marker is not None or os.path.lexists(os.path.join(root, PENDING)))
        for stale in glob.glob(os.path.join(root, _TMP_PREFIX + "*")):
            _remove(stale)
        _write_json(os.path.join(root, PENDING), wanted)
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
                # pending marker makes the next call redo an interrupted generation
                out = os.path.join(root, f"{split}_lmdb")
                _remove(out)
                pack_coco(
                    os.path.join(root, "images", split),
                    os.path.join(root, f"instances_{split}.json"),
                    out,
                    split_name=split,
                    on_error="stop",
                    progress=progress,
                )
        finally:
            _remove(tmp)
        _write_json(os.path.join(root, MARKER), wanted)
        _remove(os.path.join(root, PENDING))
    return wanted


def _write_json(path: str, data: Any) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(data).encode()))
