"""``fcos pack-coco``: COCO image folder + instances json -> LMDB (see :mod:`.lmdb_format`).

* Stores each image's original encoded bytes with its cleaned boxes, plus the category map.
* Resumable: records are committed in chunks; a rerun on the same ``--out`` with the same json
  keeps what is there and packs the rest. Skipped images are not stored, so a rerun re-checks
  them (a fixed file gets packed).
* Never writes into a *complete* LMDB: readers open it with ``lock=False`` (training,
  evaluation), so writing into it in place would corrupt what they read. A complete ``--out``
  is refused; with ``replace`` the new LMDB is packed into the sibling folder
  ``<out>.fcos-pack-new`` (itself resumable) and swapped in when complete (an atomic exchange
  where the OS has one); processes that have the old one open keep reading its data.
* Never crashes on bad input: every skipped image and dropped box is reported with the file and
  the reason (:class:`~fcos_plugin_coco.report.PackReport`); ``on_error="stop"`` stops at the
  first problem instead. Counts reconcile: packed + skipped = images in the json, kept +
  dropped = annotations in the json.
* Bounded: json size, image bytes and pixels (:class:`~fcos_plugin_coco.decode.ImageLimits`),
  LMDB map size (grown on demand up to ``max_map_bytes``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil

import lmdb
from tqdm import tqdm

from fcos_core.errors import FcosUserError
from fcos_plugin_coco import lmdb_env
from fcos_plugin_coco import lmdb_format as fmt
from fcos_plugin_coco.annotations import (
    DEFAULT_MAX_JSON_BYTES,
    build_index,
    parse_json_bytes,
    read_bounded,
)
from fcos_plugin_coco.decode import DecodeError, ImageLimits
from fcos_plugin_coco.report import OnError, PackReport
from fcos_plugin_coco.source import load_checked

#: commit a write transaction after this many images or bytes
_CHUNK_IMAGES = 64
_CHUNK_BYTES = 32 * 1024 * 1024
_MIN_MAP = 64 * 1024 * 1024
#: suffix of the sibling folder a ``replace`` packs into before swapping it in
NEW_SUFFIX = ".fcos-pack-new"
_OLD_SUFFIX = ".fcos-pack-old-"


def default_summary_path(out_dir: str) -> str:
    """``<out>.summary.json``: next to the LMDB folder."""
    return os.path.normpath(out_dir) + ".summary.json"


def pack_coco(
    images_dir: str,
    ann_file: str,
    out_dir: str,
    *,
    split_name: str | None = None,
    on_error: OnError = "skip",
    summary_path: str | None = None,
    limits: ImageLimits = ImageLimits(),
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_map_bytes: int = 1024**4,
    progress: bool = True,
    replace: bool = False,
) -> PackReport:
    """Pack (or finish packing) ``ann_file``'s images from ``images_dir`` into ``out_dir``.

    An existing complete LMDB at ``out_dir`` is refused unless ``replace``: then the new one is
    packed next to it and swapped in when complete (``out_dir`` is never written in place).
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if not os.path.isdir(images_dir):
        raise FcosUserError(
            f"image folder {images_dir} does not exist",
            hint="pass the folder holding the json's file_name entries",
        )
    raw = read_bounded(ann_file, max_json_bytes)
    sha = hashlib.sha256(raw).hexdigest()
    report = PackReport(on_error=on_error, source=os.fspath(ann_file))
    index = build_index(parse_json_bytes(raw, os.fspath(ann_file)), report)
    del raw

    split_name = split_name or os.path.basename(os.path.normpath(out_dir))
    meta = {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "split_name": split_name,
        "categories": index.categories,
        "cat_ids": index.cat_ids,
        "source": {
            "ann_file": os.path.abspath(ann_file),
            "sha256": sha,
            "images_dir": os.path.abspath(images_dir),
        },
        "limits": {"max_pixels": limits.max_pixels, "max_bytes": limits.max_bytes},
    }
    out_dir = os.path.normpath(out_dir)
    final_summary = summary_path or default_summary_path(out_dir)
    state, old_meta = _inspect(out_dir)
    if replace and state in ("partial", "complete"):
        _only_lmdb_files(out_dir)
        new_dir = out_dir + NEW_SUFFIX
        new_state, new_meta = _inspect(new_dir)
        if os.path.lexists(new_dir):
            _only_lmdb_files(new_dir)
        if new_state != "absent" and not _same_source(new_meta, meta):
            # our own replacement cut short, for another json: start it again
            lmdb_env.release(new_dir)
            shutil.rmtree(new_dir)
        target = new_dir
    else:
        if state != "absent" and old_meta is not None and not _same_source(old_meta, meta):
            raise FcosUserError(
                f"{out_dir} holds an LMDB packed from another annotation file "
                "(or another format version), so it cannot be resumed",
                hint="choose another --out folder, or pass --replace to pack "
                "a new one next to it and swap it in when done",
            )
        if state == "complete":
            raise FcosUserError(
                f"{out_dir} is a complete LMDB already; training or evaluation may be reading "
                "it, and packing into it in place would corrupt what they read, so nothing was "
                "written",
                hint="pass --replace to pack into a new folder next to it and swap it in when "
                "complete (processes reading the old one keep their data), or choose "
                "another --out",
            )
        target = out_dir
    summary = _pack_into(
        target,
        images_dir,
        index,
        meta,
        report,
        split_name,
        limits,
        max_map_bytes,
        progress,
        out_dir,
    )
    if target != out_dir:
        _swap_in(target, out_dir)
    _write_summary(final_summary, summary)
    return report


def _inspect(out_dir: str) -> tuple[str, dict | None]:
    """``(state, meta)`` of ``out_dir``: ``absent`` (no folder, or a folder without an LMDB),
    ``partial`` (packing did not finish) or ``complete``; refuses anything else."""
    if not os.path.lexists(out_dir):
        return "absent", None
    if not os.path.isdir(out_dir):
        raise FcosUserError(
            f"--out {out_dir} exists and is not a folder", hint="choose a folder path for the LMDB"
        )
    if not os.path.exists(os.path.join(out_dir, "data.mdb")):
        return "absent", None
    try:  # this process's shared read-only handle (py-lmdb opens an LMDB once per process)
        env = lmdb_env.reader(out_dir)
        with env.begin() as txn:
            raw_meta, done = txn.get(fmt.META_KEY), txn.get(fmt.COMPLETE_KEY)
            entries = txn.stat()["entries"]
    except (FcosUserError, lmdb.Error) as exc:
        raise FcosUserError(
            f"--out {out_dir} holds a data.mdb that is not a readable LMDB ({exc})",
            hint="choose another --out folder",
        ) from None
    if raw_meta is None:
        if entries == 0:
            return "partial", None  # created by an interrupted run before its first commit
        raise FcosUserError(
            f"--out {out_dir} holds an LMDB not written by `fcos pack-coco`",
            hint="choose another --out folder",
        )
    try:
        meta = json.loads(raw_meta)
    except ValueError:
        meta = {}
    return ("complete" if done is not None else "partial"), meta


def _only_lmdb_files(folder: str) -> None:
    """Refuse to replace (delete) a folder holding anything besides the LMDB's own files."""
    other = sorted(set(os.listdir(folder)) - {"data.mdb", "lock.mdb"})
    if other:
        raise FcosUserError(
            f"{folder} holds files besides the LMDB ({', '.join(other[:5])}"
            f"{' ...' if len(other) > 5 else ''}); replacing it would delete "
            "them, so nothing was written",
            hint="move those files away, or choose another --out",
        )


def _same_source(old: dict | None, new: dict) -> bool:
    if old is None:
        return True  # an empty LMDB: nothing written yet
    try:
        return (
            old.get("format") == fmt.FORMAT_NAME
            and old.get("version") == fmt.FORMAT_VERSION
            and old["source"]["sha256"] == new["source"]["sha256"]
        )
    except (KeyError, TypeError, AttributeError):
        return False


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new_dir: str, out_dir: str) -> None:
    """Put the complete LMDB ``new_dir`` at ``out_dir`` and delete the replaced one (open
    readers keep their mapping of its data; this process's cached reader notices the new
    inode and reopens)."""
    if _exchange(new_dir, out_dir):
        old = new_dir
    else:  # no atomic exchange here: two renames, out_dir missing for a moment
        old = f"{out_dir}{_OLD_SUFFIX}{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(new_dir, out_dir)
    shutil.rmtree(old)


def _pack_into(
    out_dir: str,
    images_dir: str,
    index,
    meta: dict,
    report: PackReport,
    split_name: str,
    limits: ImageLimits,
    max_map_bytes: int,
    progress: bool,
    final_dir: str,
) -> dict:
    """Pack (or resume packing) into ``out_dir``, which is absent, empty or partial (or a
    replacement's sibling folder); the summary names ``final_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    lmdb_env.release(out_dir)  # a reader of this LMDB in this process would block the writer
    map_size = _estimate_map_size(images_dir, index.images, max_map_bytes)
    try:
        env = lmdb.open(out_dir, map_size=map_size, subdir=True, meminit=False, map_async=False)
    except lmdb.Error as exc:  # disk full, read-only filesystem...
        raise FcosUserError(
            f"cannot open the LMDB {out_dir} for writing: {exc}",
            hint="check that the disk has room and --out is writable, then rerun the same command",
        ) from None
    try:
        _check_or_write_meta(env, meta, out_dir, max_map_bytes)
        packed_ids = _pack_images(
            env, images_dir, index.images, report, limits, max_map_bytes, progress, split_name
        )
        report.check()
        summary = report.to_dict()
        summary["split_name"] = split_name
        summary["lmdb"] = os.path.abspath(final_dir)
        summary["cat_ids"] = index.cat_ids
        _put_all(
            env,
            [
                (fmt.INDEX_KEY, fmt.dumps(packed_ids)),
                (fmt.SUMMARY_KEY, fmt.dumps(summary)),
                (fmt.COMPLETE_KEY, b"1"),
            ],
            max_map_bytes,
        )
        try:
            env.sync()
        except lmdb.Error as exc:
            raise _write_error(env, exc) from None
    finally:
        env.close()
    return summary


def _estimate_map_size(images_dir: str, records: list, cap: int) -> int:
    """Encoded bytes plus headroom; LMDB files are sparse, so generous is free."""
    total = 0
    for rec in records:
        with contextlib.suppress(OSError):  # a missing image is reported when it is read
            total += os.path.getsize(os.path.join(images_dir, rec.file_name))
    return int(min(cap, max(_MIN_MAP, 1.5 * total + 4096 * len(records) + _MIN_MAP)))


def _check_or_write_meta(env: lmdb.Environment, meta: dict, out_dir: str, cap: int) -> None:
    with env.begin() as txn:
        old = txn.get(fmt.META_KEY)
    if old is None:
        _put_all(env, [(fmt.META_KEY, fmt.dumps(meta))], cap)
        return
    try:
        old_meta = json.loads(old)
        same = (
            old_meta.get("format") == fmt.FORMAT_NAME
            and old_meta.get("version") == fmt.FORMAT_VERSION
            and old_meta["source"]["sha256"] == meta["source"]["sha256"]
        )
    except (ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise FcosUserError(
            f"{out_dir} holds an LMDB packed from another annotation file (or "
            "another format version), so it cannot be resumed",
            hint="choose another --out folder or delete this one",
        )


def _pack_images(
    env: lmdb.Environment,
    images_dir: str,
    records: list,
    report: PackReport,
    limits: ImageLimits,
    cap: int,
    progress: bool,
    split_name: str,
) -> list[int]:
    packed_ids: list[int] = []
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    bar = tqdm(
        total=len(records),
        desc=f"pack {split_name}",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
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
                report.skip_image(
                    exc.reason,
                    exc.detail,
                    file=rec.file_name,
                    image_id=rec.id,
                    boxes=len(rec.boxes),
                    crowd=int(rec.iscrowd.sum()),
                )
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
                raise FcosUserError(
                    f"the LMDB {env.path()} reached its map-size limit "
                    f"({cap / 2**30:.1f} GiB); {_CONSISTENT}",
                    hint="raise --max-map-gb and rerun the same command: it "
                    "resumes where it stopped",
                ) from None
            env.set_mapsize(min(cap, size * 2))
        except lmdb.Error as exc:  # disk full (ENOSPC), quota, I/O error...
            raise _write_error(env, exc) from None


#: what a failed write leaves behind (LMDB commits are atomic)
_CONSISTENT = (
    "the images committed before it are kept and the LMDB is consistent (a failed "
    "transaction is rolled back)"
)


def _write_error(env: lmdb.Environment, exc: Exception) -> FcosUserError:
    full = "No space left" in str(exc) or "quota" in str(exc).lower()
    cause = "the disk is full" if full else "the write failed"
    return FcosUserError(
        f"writing the LMDB {env.path()} failed: {exc}; {cause}, and {_CONSISTENT}",
        hint=(
            "free disk space (or pass an --out on a disk with room), then "
            "rerun the same command: it resumes where it stopped"
            if full
            else "fix the cause, then rerun the same command: it resumes where it stopped"
        ),
    )


def _write_summary(path: str, summary: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:  # the LMDB is complete; only its summary file is missing
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FcosUserError(
            f"the LMDB is complete, but its summary {path} could not be "
            f"written: {exc.strerror or exc}",
            hint="the LMDB can be used as it is (the summary is stored "
            "inside it too); free disk space for later runs",
        ) from None
