"""``fcos pack-coco``: COCO image folder + instances json -> LMDB (see :mod:`.lmdb_format`).

* Stores each image's original encoded bytes with its cleaned boxes, plus the category map.
* Resumable: records are committed in chunks; a rerun on the same ``--out`` with the same json
  keeps what is there and packs the rest. Skipped images are not stored, so a rerun re-checks
  them (a fixed file gets packed).
* Never crashes on bad input: every skipped image and dropped box is reported with the file and
  the reason (:class:`~fcos_plugin_coco.report.PackReport`); ``on_error="stop"`` stops at the
  first problem instead. Counts reconcile: packed + skipped = images in the json, kept +
  dropped = annotations in the json.
* Bounded: json size, image bytes and pixels (:class:`~fcos_plugin_coco.decode.ImageLimits`),
  LMDB map size (grown on demand up to ``max_map_bytes``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import lmdb
from tqdm import tqdm

from fcos_core.errors import FcosUserError
from fcos_plugin_coco import lmdb_env
from fcos_plugin_coco import lmdb_format as fmt
from fcos_plugin_coco.annotations import (DEFAULT_MAX_JSON_BYTES, build_index, parse_json_bytes,
                                          read_bounded)
from fcos_plugin_coco.decode import DecodeError, ImageLimits
from fcos_plugin_coco.report import OnError, PackReport
from fcos_plugin_coco.source import load_checked

#: commit a write transaction after this many images or bytes
_CHUNK_IMAGES = 64
_CHUNK_BYTES = 32 * 1024 * 1024
_MIN_MAP = 64 * 1024 * 1024


def default_summary_path(out_dir: str) -> str:
    """``<out>.summary.json``: next to the LMDB folder."""
    return os.path.normpath(out_dir) + ".summary.json"


def pack_coco(
    images_dir: str,
    ann_file: str,
    out_dir: str,
    *,
    split_name: Optional[str] = None,
    on_error: OnError = "skip",
    summary_path: Optional[str] = None,
    limits: ImageLimits = ImageLimits(),
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_map_bytes: int = 1024**4,
    progress: bool = True,
) -> PackReport:
    """Pack (or finish packing) ``ann_file``'s images from ``images_dir`` into ``out_dir``."""
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if not os.path.isdir(images_dir):
        raise FcosUserError(f"image folder {images_dir} does not exist",
                            hint="pass the folder holding the json's file_name entries")
    raw = read_bounded(ann_file, max_json_bytes)
    sha = hashlib.sha256(raw).hexdigest()
    report = PackReport(on_error=on_error, source=os.fspath(ann_file))
    index = build_index(parse_json_bytes(raw, os.fspath(ann_file)), report)
    del raw

    split_name = split_name or os.path.basename(os.path.normpath(out_dir))
    meta = {
        "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "split_name": split_name,
        "categories": index.categories, "cat_ids": index.cat_ids,
        "source": {"ann_file": os.path.abspath(ann_file), "sha256": sha,
                   "images_dir": os.path.abspath(images_dir)},
        "limits": {"max_pixels": limits.max_pixels, "max_bytes": limits.max_bytes},
    }
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FcosUserError(f"--out {out_dir} exists and is not a folder",
                            hint="choose a folder path for the LMDB")
    os.makedirs(out_dir, exist_ok=True)
    lmdb_env.release(out_dir)  # a reader of this LMDB in this process would block the writer
    map_size = _estimate_map_size(images_dir, index.images, max_map_bytes)
    env = lmdb.open(out_dir, map_size=map_size, subdir=True, meminit=False, map_async=False)
    try:
        _check_or_write_meta(env, meta, out_dir, max_map_bytes)
        packed_ids = _pack_images(env, images_dir, index.images, report, limits, max_map_bytes,
                                  progress, split_name)
        report.check()
        summary = report.to_dict()
        summary["split_name"] = split_name
        summary["lmdb"] = os.path.abspath(out_dir)
        summary["cat_ids"] = index.cat_ids
        _put_all(env, [(fmt.INDEX_KEY, fmt.dumps(packed_ids)),
                       (fmt.SUMMARY_KEY, fmt.dumps(summary)),
                       (fmt.COMPLETE_KEY, b"1")], max_map_bytes)
        env.sync()
    finally:
        env.close()
    _write_summary(summary_path or default_summary_path(out_dir), summary)
    return report


def _estimate_map_size(images_dir: str, records: list, cap: int) -> int:
    """Encoded bytes plus headroom; LMDB files are sparse, so generous is free."""
    total = 0
    for rec in records:
        try:
            total += os.path.getsize(os.path.join(images_dir, rec.file_name))
        except OSError:
            pass  # reported when the image is read
    return int(min(cap, max(_MIN_MAP, 1.5 * total + 4096 * len(records) + _MIN_MAP)))


def _check_or_write_meta(env: lmdb.Environment, meta: dict, out_dir: str, cap: int) -> None:
    with env.begin() as txn:
        old = txn.get(fmt.META_KEY)
    if old is None:
        _put_all(env, [(fmt.META_KEY, fmt.dumps(meta))], cap)
        return
    try:
        old_meta = json.loads(old)
        same = (old_meta.get("format") == fmt.FORMAT_NAME
                and old_meta.get("version") == fmt.FORMAT_VERSION
                and old_meta["source"]["sha256"] == meta["source"]["sha256"])
    except (ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise FcosUserError(f"{out_dir} holds an LMDB packed from another annotation file (or "
                            "another format version), so it cannot be resumed",
                            hint="choose another --out folder or delete this one")


def _pack_images(env: lmdb.Environment, images_dir: str, records: list, report: PackReport,
                 limits: ImageLimits, cap: int, progress: bool, split_name: str) -> list[int]:
    packed_ids: list[int] = []
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    bar = tqdm(total=len(records), desc=f"pack {split_name}", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for rec in records:
            bar.update(1)
            with env.begin() as txn:
                stored = txn.get(fmt.image_key(rec.id))
            if stored is not None:  # packed by an interrupted earlier run
                header, _ = fmt.decode_record(stored)
                for reason, detail in header.get("notes", []):
                    report.note(reason, detail, file=rec.file_name, image_id=rec.id)
                report.images_packed += 1
                report.images_resumed += 1
                packed_ids.append(rec.id)
                continue
            report.images_read += 1
            try:
                loaded = load_checked(images_dir, rec, limits)
            except DecodeError as exc:
                # commit what is done first: under on_error=stop the next line raises
                _put_all(env, pending, cap)
                pending, pending_bytes = [], 0
                report.skip_image(exc.reason, exc.detail, file=rec.file_name, image_id=rec.id,
                                  boxes=len(rec.boxes), crowd=int(rec.iscrowd.sum()))
                continue
            for reason, detail in loaded.notes:
                report.note(reason, detail, file=rec.file_name, image_id=rec.id)
            header = rec.header()
            header["orientation"] = loaded.orientation
            header["notes"] = [list(n) for n in loaded.notes]
            value = fmt.encode_record(header, loaded.data)
            pending.append((fmt.image_key(rec.id), value))
            pending_bytes += len(value)
            report.images_packed += 1
            packed_ids.append(rec.id)
            if len(pending) >= _CHUNK_IMAGES or pending_bytes >= _CHUNK_BYTES:
                _put_all(env, pending, cap)
                pending, pending_bytes = [], 0
        _put_all(env, pending, cap)
    finally:
        bar.close()
    return packed_ids


def _put_all(env: lmdb.Environment, items: list, cap: int) -> None:
    """Write ``items`` in one transaction, growing the map (up to ``cap``) when it is full."""
    if not items:
        return
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            size = env.info()["map_size"]
            if size >= cap:
                raise FcosUserError(f"the LMDB reached its map-size limit ({cap / 2**30:.1f} "
                                    "GiB)", hint="raise --max-map-gb") from None
            env.set_mapsize(min(cap, size * 2))


def _write_summary(path: str, summary: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)
