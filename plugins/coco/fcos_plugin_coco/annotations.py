"""Read a COCO instances json into clean per-image records (shared by the packer and CocoFolder).

Rules (each violation is reported through :class:`~fcos_plugin_coco.report.PackReport`):

* categories: integer ids, unique; need not be contiguous. Label ``i`` is the ``i``-th smallest
  category id.
* images: integer unique ids, a relative ``file_name`` that stays inside the image folder, and
  positive integer ``width``/``height`` (the frame the boxes are in).
* annotations: integer unique ids, a known image and category, ``bbox`` = 4 finite numbers
  ``[x, y, w, h]``. ``w <= 0`` or ``h <= 0`` is dropped (``degenerate_box``); a box partly outside
  the image is clipped to it and counted as clipped; one with no area left after clipping is
  dropped (``outside_image``). ``iscrowd`` boxes are kept as ignore regions (label -1).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import attrs
import numpy as np

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.report import PackReport

#: default upper bound of an annotation file (COCO train2017 instances is ~450 MiB)
DEFAULT_MAX_JSON_BYTES = 2 * 1024**3


@attrs.frozen(eq=False)
class ImageRecord:
    """One image and its kept boxes (xyxy in the json's pixel frame)."""

    id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    category_ids: np.ndarray  # int64 [N]
    iscrowd: np.ndarray  # bool [N]
    ann_ids: np.ndarray  # int64 [N]

    def header(self) -> dict[str, Any]:
        """JSON-able form stored in the LMDB (float32 values round-trip exactly)."""
        return {
            "id": self.id,
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "boxes": self.boxes.astype(float).tolist(),
            "category_ids": self.category_ids.tolist(),
            "iscrowd": self.iscrowd.tolist(),
            "ann_ids": self.ann_ids.tolist(),
        }

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> ImageRecord:
        return cls(
            id=int(h["id"]),
            file_name=str(h["file_name"]),
            width=int(h["width"]),
            height=int(h["height"]),
            boxes=np.asarray(h["boxes"], dtype=np.float32).reshape(-1, 4),
            category_ids=np.asarray(h["category_ids"], dtype=np.int64).reshape(-1),
            iscrowd=np.asarray(h["iscrowd"], dtype=bool).reshape(-1),
            ann_ids=np.asarray(h["ann_ids"], dtype=np.int64).reshape(-1),
        )


@attrs.frozen
class CocoIndex:
    """Clean categories and images of one json."""

    categories: list  # [{"id", "name", "supercategory"}] sorted by id
    images: list  # [ImageRecord] in json order

    @property
    def cat_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]


def load_json(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_JSON_BYTES) -> Any:
    """Parse a json file no larger than ``max_bytes``; errors name the file and the fix."""
    path = os.fspath(path)
    return parse_json_bytes(read_bounded(path, max_bytes), path)


def read_bounded(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_JSON_BYTES) -> bytes:
    """The bytes of ``path``, refusing files over ``max_bytes``."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise FcosUserError(
                f"annotation file {path} is {size / 2**20:.0f} MiB, over the "
                f"{max_bytes / 2**20:.0f} MiB limit",
                hint="raise the limit (pack-coco --max-json-mb) if the file is real",
            )
        with open(path, "rb") as f:
            # read(n) allocates n bytes up front: ask for the file's size, not the limit
            data = f.read(min(max_bytes, size) + 1)
            while len(data) <= max_bytes:  # the file grew while we read it: bounded chunks
                more = f.read(min(1 << 24, max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
    except OSError as exc:
        raise FcosUserError(
            f"cannot read annotation file {path}: {exc.strerror}", hint="check the path"
        ) from exc
    if len(data) > max_bytes:  # the file grew while we read it
        raise FcosUserError(f"annotation file {path} is over the {max_bytes} byte limit")
    return data


def parse_json_bytes(data: bytes, path: str) -> Any:
    """Parse json text read from ``path`` (named in errors)."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise FcosUserError(
            f"annotation file {path} is not valid JSON: {exc.msg} at line "
            f"{exc.lineno} column {exc.colno}",
            hint="fix or regenerate the file",
        ) from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise FcosUserError(
            f"annotation file {path} is not valid JSON: {exc}", hint="fix or regenerate the file"
        ) from exc
    except ValueError as exc:  # an integer over Python's digit limit (int_max_str_digits)
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        what = (
            f"holds an integer of more than {limit} digits, over Python's limit for "
            "reading integers"
            if "digits" in str(exc)
            else f"cannot be read ({exc})"
        )
        raise FcosUserError(
            f"annotation file {path} {what}",
            hint="ids, sizes and boxes of a COCO json are small numbers; an "
            "integer that long means the file is damaged: fix or "
            "regenerate it",
        ) from exc


def check_coco_layout(data: Any, source: str) -> None:
    """A COCO instances json is a mapping with lists ``images``, ``annotations``, ``categories``."""
    if not isinstance(data, dict):
        raise FcosUserError(
            f"{source}: expected a JSON object with images/annotations/"
            f"categories, got {type(data).__name__}",
            hint="pass a COCO instances_*.json file",
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise FcosUserError(
                f"{source}: '{key}' must be a list "
                f"({'missing' if key not in data else type(data[key]).__name__})",
                hint="pass a COCO instances_*.json file",
            )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def safe_relative(name: str) -> bool:
    """A file_name that cannot escape the image folder (no absolute path, no '..')."""
    if not name or "\x00" in name:
        return False
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def parse_categories(data: dict, report: PackReport) -> list[dict]:
    """Valid categories sorted by id (the contiguous label order)."""
    seen: dict[int, dict] = {}
    report.categories_in_json = len(data["categories"])
    for cat in data["categories"]:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid):
            report.skip_category("bad_category_id", f"category {cat!r:.80} has no integer id")
            continue
        if cid in seen:
            report.skip_category(
                "duplicate_category_id", f"category id {cid} appears twice; the first is kept"
            )
            continue
        seen[cid] = {
            "id": cid,
            "name": str(cat.get("name", cid)),
            "supercategory": str(cat.get("supercategory", "")),
        }
    return [seen[k] for k in sorted(seen)]


def build_index(data: Any, report: PackReport) -> CocoIndex:
    """Validate and clean a parsed json; every dropped item goes through ``report``."""
    check_coco_layout(data, report.source)
    categories = parse_categories(data, report)
    known_cats = {c["id"] for c in categories}

    report.images_in_json = len(data["images"])
    report.boxes_in_json = len(data["annotations"])
    images: dict[int, dict] = {}
    skipped_ids: set[int] = set()
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        fname = img.get("file_name") if isinstance(img, dict) else None
        shown = fname if isinstance(fname, str) else None
        if not _is_int(iid):
            report.skip_image(
                "bad_image_id", f"image entry {img!r:.80} has no integer id", file=shown
            )
            continue
        if iid in images or iid in skipped_ids:
            report.skip_image(
                "duplicate_image_id",
                f"image id {iid} appears twice; the first is kept",
                file=shown,
                image_id=iid,
            )
            continue
        if not isinstance(fname, str) or not safe_relative(fname):
            skipped_ids.add(iid)
            report.skip_image(
                "bad_file_name",
                f"file_name {fname!r:.80} must be a relative path inside the image folder",
                image_id=iid,
            )
            continue
        w, h = img.get("width"), img.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            skipped_ids.add(iid)
            report.skip_image(
                "bad_image_size",
                f"width/height must be positive integers, got {w!r}x{h!r}",
                file=fname,
                image_id=iid,
            )
            continue
        images[iid] = {"id": iid, "file_name": fname, "width": w, "height": h, "anns": []}

    ann_ids: set[int] = set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            report.drop_box("bad_annotation", f"annotation {ann!r:.80} is not an object")
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        img = images.get(iid) if _is_int(iid) else None
        fname = img["file_name"] if img else None
        where = {"file": fname, "image_id": iid, "ann_id": aid}
        if not _is_int(aid):
            report.drop_box("bad_annotation_id", f"id {aid!r:.40} is not an integer", **where)
            continue
        if aid in ann_ids:
            report.drop_box(
                "duplicate_annotation_id",
                f"annotation id {aid} appears twice; the first is kept",
                **where,
            )
            continue
        ann_ids.add(aid)
        if img is None:
            why = "image_skipped" if iid in skipped_ids else "unknown_image_id"
            report.drop_box(why, f"image_id {iid!r:.40} is not a usable image", **where)
            continue
        if not _is_int(cid) or cid not in known_cats:
            report.drop_box(
                "unknown_category_id", f"category_id {cid!r:.40} is not in categories", **where
            )
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_num, bbox))):
            report.drop_box("bad_bbox", f"bbox {bbox!r:.80} is not 4 finite numbers", **where)
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            report.drop_box("degenerate_box", f"bbox {bbox} has zero or negative size", **where)
            continue
        W, H = img["width"], img["height"]
        box = [
            min(max(x, 0.0), W),
            min(max(y, 0.0), H),
            min(max(x + bw, 0.0), W),
            min(max(y + bh, 0.0), H),
        ]
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            report.drop_box("outside_image", f"bbox {bbox} lies outside the {W}x{H} image", **where)
            continue
        if box != [x, y, x + bw, y + bh]:
            report.boxes_clipped += 1
            report.note("box_clipped", f"bbox {bbox} clipped to the {W}x{H} image", **where)
        crowd = bool(ann.get("iscrowd", 0))
        report.boxes_kept += 1
        report.boxes_kept_crowd += int(crowd)
        img["anns"].append((box, cid, crowd, aid))

    records = []
    for img in images.values():
        anns = img["anns"]
        records.append(
            ImageRecord(
                id=img["id"],
                file_name=img["file_name"],
                width=img["width"],
                height=img["height"],
                boxes=np.asarray([a[0] for a in anns], dtype=np.float32).reshape(-1, 4),
                category_ids=np.asarray([a[1] for a in anns], dtype=np.int64),
                iscrowd=np.asarray([a[2] for a in anns], dtype=bool),
                ann_ids=np.asarray([a[3] for a in anns], dtype=np.int64),
            )
        )
    return CocoIndex(categories=categories, images=records)
