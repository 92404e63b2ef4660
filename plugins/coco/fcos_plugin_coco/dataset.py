"""Map-style COCO detection datasets: :class:`Coco` (packed LMDB) and :class:`CocoFolder`.

Both produce the sample dict of docs/interfaces.md ("Data samples and batches") from the same
cleaned records and the same decoder, so they give identical samples for the same data:

``img`` uint8 [H, W, 3] RGB; ``gt_bboxes`` float32 [N, 4] xyxy; ``gt_classes`` int64 [N] with
label ``i`` = ``i``-th smallest category id and -1 for crowd (ignore) regions; ``img_id``;
``ori_shape`` / ``img_shape`` / ``pad_shape`` = (h, w); ``scale_factor`` float32 [1, 1].

Both are safe with ``num_workers > 0`` and DDP: a dataset object holds no file handle (it
pickles as paths and metadata); the LMDB is opened on use, once per process, through
:mod:`fcos_plugin_coco.lmdb_env` (a handle inherited through ``fork`` is never reused).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fcos_core.errors import FcosUserError
from fcos_plugin_coco import lmdb_env
from fcos_plugin_coco import lmdb_format as fmt
from fcos_plugin_coco.annotations import DEFAULT_MAX_JSON_BYTES, ImageRecord, build_index, load_json
from fcos_plugin_coco.decode import DecodeError, ImageLimits, decode_image
from fcos_plugin_coco.report import PackReport
from fcos_plugin_coco.source import load_checked
from fcos_plugin_coco.transforms.fused import fuse

log = logging.getLogger(__name__)

Transform = Callable[[dict], dict]


def make_sample(rgb: np.ndarray, rec: ImageRecord, cat_ids: np.ndarray) -> dict[str, Any]:
    """The untransformed sample of ``rec`` (see the module docstring for the keys)."""
    labels = np.searchsorted(cat_ids, rec.category_ids).astype(np.int64)
    labels[rec.iscrowd] = -1
    h, w = rgb.shape[:2]
    return {
        "img": rgb,
        "gt_bboxes": rec.boxes.astype(np.float32, copy=True).reshape(-1, 4),
        "gt_classes": labels,
        "img_id": rec.id,
        "ori_shape": (h, w),
        "img_shape": (h, w),
        "pad_shape": (h, w),
        "scale_factor": np.ones(2, dtype=np.float32),
    }


def _check_transforms(transforms: Sequence[Transform] | None) -> list[Transform]:
    out = list(transforms or [])
    for i, t in enumerate(out):
        if not callable(t):
            raise TypeError(
                f"transforms[{i}] is {type(t).__name__}, not a callable sample -> sample"
            )
    return out


def _demo_root_for(path: str, what: str) -> None:
    """Generate the demo dataset into ``path``'s parent folder (idempotent, race-safe)."""
    from fcos_plugin_coco.demo.generate import ensure_demo

    root = os.path.dirname(os.path.abspath(path))
    ensure_demo(root)
    if not os.path.exists(path):
        raise FcosUserError(
            f"{what} {path} is still missing after generating the demo data into {root}",
            hint="point it at train_lmdb, val_lmdb, instances_train.json, "
            "instances_val.json or images/{train,val} inside that folder",
        )


class _Base(Dataset):
    cat_ids: list[int]
    classes: list[str]
    transforms: list[Transform]

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _finish(self, sample: dict[str, Any]) -> dict[str, Any]:
        # Resize + RandomCrop run fused (same result, less resampling); the scan is cheap, and
        # redoing it per call keeps it right when someone replaces ``transforms``
        for t in fuse(self.transforms):
            sample = t(sample)
        return sample


class Coco(_Base):
    """COCO detection samples from an LMDB written by ``fcos pack-coco``.

    Args:
        data_path: the LMDB folder.
        transforms: callables ``sample -> sample`` applied in order.
        demo_if_missing: when ``data_path`` does not exist, generate the demo dataset into its
            parent folder first.
        limits: decoding bounds (pixels, bytes).
    """

    def __init__(
        self,
        data_path: str,
        transforms: Sequence[Transform] | None = None,
        demo_if_missing: bool = False,
        limits: ImageLimits = ImageLimits(),
    ) -> None:
        data_path = os.fspath(data_path)
        if not os.path.exists(data_path):
            if not demo_if_missing:
                raise FcosUserError(
                    f"dataset folder {data_path} does not exist",
                    hint="pack your data with `fcos pack-coco`, generate the "
                    "demo with `fcos demo-data`, or set demo_if_missing",
                )
            _demo_root_for(data_path, "data_path")
        self.data_path = data_path
        self.transforms = _check_transforms(transforms)
        self.limits = limits
        meta, ids = self._read_header()
        self.categories: list[dict] = meta["categories"]
        self.cat_ids = [int(c) for c in meta["cat_ids"]]
        self.classes = [c["name"] for c in self.categories]
        self.split_name: str = meta.get("split_name", "")
        self.img_ids: list[int] = ids
        self._cat_arr = np.asarray(self.cat_ids, dtype=np.int64)

    def _read_header(self) -> tuple[dict, list[int]]:
        with lmdb_env.reader(self.data_path).begin() as txn:
            meta, index, done = (
                txn.get(fmt.META_KEY),
                txn.get(fmt.INDEX_KEY),
                txn.get(fmt.COMPLETE_KEY),
            )
        if meta is None:
            raise FcosUserError(
                f"{self.data_path} is an LMDB but not one written by `fcos pack-coco`",
                hint="pack your data with `fcos pack-coco`",
            )
        meta_d = json.loads(meta)
        if meta_d.get("format") != fmt.FORMAT_NAME or meta_d.get("version") != fmt.FORMAT_VERSION:
            raise FcosUserError(
                f"{self.data_path} has format {meta_d.get('format')} version "
                f"{meta_d.get('version')}; this plugin reads {fmt.FORMAT_NAME} "
                f"version {fmt.FORMAT_VERSION}",
                hint="re-pack the data",
            )
        if done is None or index is None:
            raise FcosUserError(
                f"packing of {self.data_path} did not finish",
                hint="rerun the same `fcos pack-coco` command: it resumes",
            )
        return meta_d, [int(i) for i in json.loads(index)]

    def __len__(self) -> int:
        return len(self.img_ids)

    def read_record(self, idx: int) -> tuple[ImageRecord, np.ndarray]:
        """The stored record and decoded RGB pixels of item ``idx`` (no transforms)."""
        image_id = self.img_ids[idx]
        with lmdb_env.reader(self.data_path).begin() as txn:
            value = txn.get(fmt.image_key(image_id))
        if value is None:
            raise FcosUserError(
                f"{self.data_path}: image {image_id} is in the index but has no record",
                hint="re-pack the data",
            )
        header, data = fmt.decode_record(value)
        rgb = decode_image(data, int(header.get("orientation", 1)), self.limits)
        return ImageRecord.from_header(header), rgb

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec, rgb = self.read_record(idx)
        return self._finish(make_sample(rgb, rec, self._cat_arr))

    def __repr__(self) -> str:
        return f"Coco({self.data_path!r}, {len(self)} images, {self.num_classes} classes)"


class CocoFolder(_Base):
    """COCO detection samples read straight from an image folder and an instances json.

    The json is cleaned with the packer's rules (problems are logged, bad entries left out);
    an image that cannot be decoded raises :class:`~fcos_core.errors.FcosUserError` naming the
    file (``fcos pack-coco`` checks every image up front and skips bad ones instead).
    """

    def __init__(
        self,
        data_path: str,
        ann_file: str,
        transforms: Sequence[Transform] | None = None,
        demo_if_missing: bool = False,
        limits: ImageLimits = ImageLimits(),
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        data_path, ann_file = os.fspath(data_path), os.fspath(ann_file)
        if not os.path.exists(ann_file) and demo_if_missing:
            _demo_root_for(ann_file, "ann_file")
        if not os.path.isdir(data_path):
            raise FcosUserError(
                f"image folder {data_path} does not exist",
                hint="pass the folder holding the json's file_name entries",
            )
        report = PackReport(on_error="skip", source=ann_file)
        index = build_index(load_json(ann_file, max_json_bytes), report)
        problems = [p for p in report.problems if p.kind != "note"]
        if problems:
            log.warning(
                "%s: %d images and %d annotations left out; first: %s",
                ann_file,
                sum(report.images_skipped.values()),
                sum(report.boxes_dropped.values()),
                problems[0].render(),
            )
        self.data_path = data_path
        self.ann_file = ann_file
        self.transforms = _check_transforms(transforms)
        self.limits = limits
        self.categories = index.categories
        self.cat_ids = index.cat_ids
        self.classes = [c["name"] for c in index.categories]
        self.records: list[ImageRecord] = index.images
        self.img_ids = [r.id for r in self.records]
        self._cat_arr = np.asarray(self.cat_ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def read_record(self, idx: int) -> tuple[ImageRecord, np.ndarray]:
        rec = self.records[idx]
        try:
            loaded = load_checked(self.data_path, rec, self.limits)
        except DecodeError as exc:
            raise FcosUserError(
                f"{os.path.join(self.data_path, rec.file_name)} (image {rec.id}): {exc}",
                hint="fix the file, or pack the data with `fcos pack-coco`, "
                "which skips and reports bad images",
            ) from exc
        return rec, loaded.rgb

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec, rgb = self.read_record(idx)
        return self._finish(make_sample(rgb, rec, self._cat_arr))

    def __repr__(self) -> str:
        return f"CocoFolder({self.data_path!r}, {len(self)} images, {self.num_classes} classes)"
