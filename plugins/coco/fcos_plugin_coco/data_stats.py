"""Figures of a detection training set against a model's strides (``fcos analyze-data``).

Torch-free and vectorised with numpy: the annotations are read without decoding any image
(the LMDB's per-image JSON headers, or the instances json cleaned with the packer's rules), so
COCO train2017's 860k boxes take seconds.

What is computed (objects = non-crowd boxes; crowd boxes are ignore regions, counted apart):

* the **geometry the network sees**: each image goes through the scale changes of the config's
  train transforms at their nominal setting -- ``Resize`` (keep_ratio: one factor
  ``min(max(S)/max(h, w), min(S)/min(h, w))``, the output size rounded as the transform rounds
  it; else a stretch to ``img_scale``; ``ratio_range`` is left at 1, its range is reported),
  ``RandomCrop`` (limits the input size, boxes are not cut), ``Pad`` (``size`` or ``divisor``)
  -- giving per image the box coordinates and the network input size;
* **box sizes** after that resize: ``sqrt(area)`` and the longer side (percentiles and a
  histogram on quarter-octave bins), tiny boxes (longer side < 8 px) and huge ones (wider or
  taller than the network input);
* **points inside boxes**, as ``DynamicFcosTarget`` assigns: the stride-``s`` grid has points at
  ``(j*s + s//2, i*s + s//2)`` for ``j < ceil(W/s)``, ``i < ceil(H/s)``; a point is a candidate of
  a box when it lies strictly inside it (and, with ``center_sampling_radius r``, closer than
  ``r*s`` to its centre on both axes). Per stride: objects with >= 1 and >= 4 such points;
  objects with none at the finest stride, and with none at any stride (these fall back to the
  one finest-stride point nearest their centre);
* boxes per image, images without objects, objects per category.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from fcos_core.errors import FcosUserError

#: longer side (px, after the resize) below which a box is reported as tiny
TINY_PX = 8.0
#: percentiles reported for the size distributions
PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
#: transforms that change neither the scale nor the input size
NO_GEOMETRY = frozenset({"RandomFlip", "AugmentHSV", "ToTensor", "Normalize"})


@attrs.frozen(eq=False)
class Annotations:
    """All boxes of a split, flat, with the image each belongs to."""

    source: str
    categories: list  # [{"id", "name", ...}] sorted by id; label i = categories[i]
    heights: np.ndarray  # int64 [I]
    widths: np.ndarray  # int64 [I]
    boxes: np.ndarray  # float32 [N, 4] xyxy, original pixels
    image: np.ndarray  # int64 [N] index into heights/widths
    labels: np.ndarray  # int64 [N] category index, -1 for crowd (ignore) regions


@attrs.frozen
class Geometry:
    """What the config does to an image's scale and the network input (see the module doc)."""

    ops: tuple  # (("resize", (sh, sw), keep_ratio, ratio_range) | ("crop", (h, w))
    #              | ("pad_size", (h, w)) | ("pad_divisor", d), ...)
    strides: tuple[int, ...]
    center_sampling_radius: float | None = None
    fallback_input: tuple[int, int] | None = None  # used when no op fixes the input size
    ignored: tuple[str, ...] = ()  # transform names whose geometry is not modelled


# --- reading -----------------------------------------------------------------------------------


def _from_lists(
    source: str, categories: list, hw: list, boxes: list, image: list, cat_ids: list, crowd: list
) -> Annotations:
    cat_arr = np.asarray([c["id"] for c in categories], dtype=np.int64)
    ids = np.asarray(cat_ids, dtype=np.int64)
    labels = np.searchsorted(cat_arr, ids).astype(np.int64)
    if len(ids) and (
        labels.max(initial=0) >= len(cat_arr)
        or not np.array_equal(cat_arr[np.minimum(labels, len(cat_arr) - 1)], ids)
    ):
        raise FcosUserError(
            f"{source}: boxes refer to category ids missing from its categories",
            hint="re-pack the data with `fcos pack-coco`",
        )
    labels[np.asarray(crowd, dtype=bool)] = -1
    size = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    return Annotations(
        source=source,
        categories=categories,
        heights=size[:, 0],
        widths=size[:, 1],
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        image=np.asarray(image, dtype=np.int64),
        labels=labels,
    )


def read_lmdb_records(path: str) -> tuple[dict, list[int], list[dict]]:
    """The metadata, image ids (index order) and per-image JSON headers (``id``, ``width``,
    ``height``, ``boxes`` xyxy, ``category_ids``, ``iscrowd``, ...) of an LMDB written by
    ``fcos pack-coco``; no image bytes are read past each record's header."""
    from fcos_plugin_coco import lmdb_env
    from fcos_plugin_coco import lmdb_format as fmt

    if not os.path.isdir(path):
        raise FcosUserError(
            f"dataset folder {path} does not exist",
            hint="pack your data with `fcos pack-coco`, or pass --data/--ann",
        )
    headers: list[bytes] = []
    head = len(fmt.MAGIC) + 4
    with lmdb_env.reader(path).begin(buffers=True) as txn:
        meta, index, done = (
            txn.get(fmt.META_KEY),
            txn.get(fmt.INDEX_KEY),
            txn.get(fmt.COMPLETE_KEY),
        )
        if meta is None:
            raise FcosUserError(
                f"{path} is an LMDB but not one written by `fcos pack-coco`",
                hint="pack your data with `fcos pack-coco`",
            )
        meta_d = json.loads(bytes(meta))
        if meta_d.get("format") != fmt.FORMAT_NAME or meta_d.get("version") != fmt.FORMAT_VERSION:
            raise FcosUserError(
                f"{path} has format {meta_d.get('format')} version "
                f"{meta_d.get('version')}; this plugin reads {fmt.FORMAT_NAME} "
                f"version {fmt.FORMAT_VERSION}",
                hint="re-pack the data",
            )
        if done is None or index is None:
            raise FcosUserError(
                f"packing of {path} did not finish",
                hint="rerun the same `fcos pack-coco` command: it resumes",
            )
        ids = [int(i) for i in json.loads(bytes(index))]
        for image_id in ids:
            value = txn.get(fmt.image_key(image_id))
            if value is None or bytes(value[: len(fmt.MAGIC)]) != fmt.MAGIC:
                raise FcosUserError(
                    f"{path}: image {image_id} is in the index but has no valid record",
                    hint="re-pack the data",
                )
            (length,) = struct.unpack_from("<I", value, len(fmt.MAGIC))
            headers.append(bytes(value[head : head + length]))
    # one parse of all headers: per-call overhead was a third of the time
    recs = json.loads(b"[" + b",".join(headers) + b"]")
    return meta_d, ids, recs


def read_lmdb(path: str) -> Annotations:
    """The annotations of an LMDB written by ``fcos pack-coco`` (headers only: no image bytes
    are read past each record's JSON header)."""
    meta_d, _, recs = read_lmdb_records(path)
    counts = [len(r["boxes"]) for r in recs]
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(r["boxes"] for r in recs))
    boxes = np.fromiter(flat, dtype=np.float32, count=4 * sum(counts)).reshape(-1, 4)
    image = np.repeat(np.arange(len(recs), dtype=np.int64), counts)
    cat_ids = list(itertools.chain.from_iterable(r["category_ids"] for r in recs))
    crowd = list(itertools.chain.from_iterable(r["iscrowd"] for r in recs))
    hw = [(r["height"], r["width"]) for r in recs]
    return _from_lists(path, list(meta_d["categories"]), hw, boxes, image, cat_ids, crowd)


def read_json(path: str, max_json_bytes: int | None = None) -> Annotations:
    """The annotations of a COCO instances json, cleaned with the packer's rules (what
    ``CocoFolder`` trains on).

    The rules are :func:`fcos_plugin_coco.annotations.build_index`'s. Its loops take ~20 us per
    entry (over 15 s for COCO), so a well-formed json -- integer unique ids, safe relative
    file names, positive integer image sizes, annotations that refer to those images and to
    known categories with ``bbox`` lists of 4 finite numbers -- is cleaned here with numpy
    instead (degenerate boxes dropped, boxes clipped to the image and dropped when nothing is
    left, as there); any other json goes through ``build_index`` itself.
    """
    from fcos_plugin_coco.annotations import (
        DEFAULT_MAX_JSON_BYTES,
        build_index,
        check_coco_layout,
        load_json,
        parse_categories,
    )
    from fcos_plugin_coco.report import PackReport

    data = load_json(path, max_json_bytes or DEFAULT_MAX_JSON_BYTES)
    check_coco_layout(data, path)
    categories = parse_categories(data, PackReport(on_error="skip", source=path))
    fast = _fast_index(data, categories)
    if fast is not None:
        return _from_lists(path, categories, *fast)
    index = build_index(data, PackReport(on_error="skip", source=path))
    hw, boxes, image, cat_ids, crowd = [], [], [], [], []
    for n, rec in enumerate(index.images):
        hw.append((rec.height, rec.width))
        boxes.append(rec.boxes)
        image.append(np.full(len(rec.boxes), n, dtype=np.int64))
        cat_ids.append(rec.category_ids)
        crowd.append(rec.iscrowd)
    cat = np.concatenate(cat_ids) if cat_ids else np.zeros(0, np.int64)
    return _from_lists(
        path,
        list(index.categories),
        hw,
        np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        np.concatenate(image) if image else np.zeros(0, np.int64),
        cat,
        np.concatenate(crowd) if crowd else np.zeros(0, bool),
    )


def _plainly_safe(name: Any) -> bool:
    """A file name ``safe_relative`` accepts, decided without pathlib for the usual names."""
    from fcos_plugin_coco.annotations import safe_relative

    if type(name) is not str or not name:
        return False
    if ".." in name or ":" in name or "\x00" in name or name[0] in "/\\":
        return safe_relative(name)
    return True


def _ints(values: list, positive: bool = False) -> bool:
    """Every value is an int (not a bool), and > 0 when ``positive``."""
    if not values:
        return True
    return set(map(type, values)) == {int} and (not positive or min(values) > 0)


def _fast_index(data: dict, categories: list) -> tuple | None:
    """``(hw, boxes, image, cat_ids, crowd)`` of a well-formed json under ``build_index``'s
    rules and in its order (images in json order; boxes per image, in json order); None when
    any entry needs its slow path (which reports and drops it)."""
    imgs, anns = data["images"], data["annotations"]
    if not set(map(type, imgs)) <= {dict} or not set(map(type, anns)) <= {dict}:
        return None
    ids = [e.get("id") for e in imgs]
    ws = [e.get("width") for e in imgs]
    hs = [e.get("height") for e in imgs]
    if not (_ints(ids) and _ints(ws, True) and _ints(hs, True)) or len(set(ids)) != len(ids):
        return None
    if not all(_plainly_safe(e.get("file_name")) for e in imgs):
        return None
    aid = [a.get("id") for a in anns]
    iid = [a.get("image_id") for a in anns]
    cid = [a.get("category_id") for a in anns]
    if not (_ints(aid) and _ints(iid) and _ints(cid)) or len(set(aid)) != len(aid):
        return None
    pos = {i: n for n, i in enumerate(ids)}
    img = [pos.get(i, -1) for i in iid]
    known = {c["id"] for c in categories}
    if -1 in img or not set(cid) <= known:
        return None
    bbox = [a.get("bbox") for a in anns]
    if not set(map(type, bbox)) <= {list, tuple} or set(map(len, bbox)) - {4}:
        return None
    if not set(map(type, itertools.chain.from_iterable(bbox))) <= {int, float}:
        return None
    arr = np.fromiter(
        itertools.chain.from_iterable(bbox), dtype=np.float64, count=4 * len(bbox)
    ).reshape(-1, 4)
    if not np.isfinite(arr).all():
        return None
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    img_a = np.asarray(img, dtype=np.int64)
    W = np.asarray(ws, dtype=np.float64)[img_a]
    H = np.asarray(hs, dtype=np.float64)[img_a]
    x, y, bw, bh = arr.T
    box = np.stack(
        [
            np.minimum(np.maximum(x, 0.0), W),
            np.minimum(np.maximum(y, 0.0), H),
            np.minimum(np.maximum(x + bw, 0.0), W),
            np.minimum(np.maximum(y + bh, 0.0), H),
        ],
        axis=1,
    )
    keep = (bw > 0) & (bh > 0) & (box[:, 2] - box[:, 0] > 0) & (box[:, 3] - box[:, 1] > 0)
    order = np.nonzero(keep)[0]
    order = order[np.argsort(img_a[order], kind="stable")]
    return (
        list(zip(hs, ws)),
        box[order].astype(np.float32),
        img_a[order],
        np.asarray(cid, dtype=np.int64)[order],
        crowd[order],
    )


# --- geometry ----------------------------------------------------------------------------------


def _resize_factors(
    h: np.ndarray, w: np.ndarray, scale: tuple[int, int], keep_ratio: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Output (height, width) of ``Resize(img_scale=scale, keep_ratio)`` at ratio 1, rounded
    as the transform rounds (``int(x + 0.5)``, at least 1)."""
    th, tw = float(scale[0]), float(scale[1])
    if keep_ratio:
        f = np.minimum(max(th, tw) / np.maximum(h, w), min(th, tw) / np.minimum(h, w))
        return (
            np.maximum(1, np.floor(h * f + 0.5)).astype(np.int64),
            np.maximum(1, np.floor(w * f + 0.5)).astype(np.int64),
        )
    return (np.full_like(h, max(1, int(th))), np.full_like(w, max(1, int(tw))))


def apply_geometry(ann: Annotations, geo: Geometry) -> dict[str, np.ndarray]:
    """Per image: resized size, scale factors and network input size; per box: the box."""
    h0 = ann.heights.astype(np.float64)
    w0 = ann.widths.astype(np.float64)
    h, w = ann.heights.copy(), ann.widths.copy()
    sx = np.ones(len(h))
    sy = np.ones(len(h))
    in_h, in_w = None, None
    for op in geo.ops:
        kind = op[0]
        if kind == "resize":
            nh, nw = _resize_factors(h, w, op[1], op[2])
            sx, sy = sx * (nw / w), sy * (nh / h)
            h, w = nh, nw
            in_h, in_w = h.copy(), w.copy()
        elif kind == "crop":
            in_h = np.minimum(h if in_h is None else in_h, op[1][0])
            in_w = np.minimum(w if in_w is None else in_w, op[1][1])
        elif kind == "pad_size":
            in_h = np.maximum(h if in_h is None else in_h, op[1][0])
            in_w = np.maximum(w if in_w is None else in_w, op[1][1])
        elif kind == "pad_divisor":
            d = int(op[1])
            in_h = -(-(h if in_h is None else in_h) // d) * d
            in_w = -(-(w if in_w is None else in_w) // d) * d
    if in_h is None:  # nothing resized or padded: the image itself, or the deploy input
        if geo.fallback_input is not None and not any(op[0] == "resize" for op in geo.ops):
            in_h = np.full_like(h, geo.fallback_input[0])
            in_w = np.full_like(w, geo.fallback_input[1])
        else:
            in_h, in_w = h.copy(), w.copy()
    # boxes scaled as Resize scales them (float32, by the per-axis factors actually applied)
    # and clipped to the resized image
    fx = (w / w0).astype(np.float32)[ann.image]
    fy = (h / h0).astype(np.float32)[ann.image]
    b = ann.boxes * np.stack([fx, fy, fx, fy], axis=1)
    lim_w = w.astype(np.float32)[ann.image]
    lim_h = h.astype(np.float32)[ann.image]
    b = np.stack(
        [
            np.clip(b[:, 0], 0, lim_w),
            np.clip(b[:, 1], 0, lim_h),
            np.clip(b[:, 2], 0, lim_w),
            np.clip(b[:, 3], 0, lim_h),
        ],
        axis=1,
    )
    return {
        "boxes": b.astype(np.float32),
        "scale_x": sx,
        "scale_y": sy,
        "resized_h": h,
        "resized_w": w,
        "input_h": in_h.astype(np.int64),
        "input_w": in_w.astype(np.int64),
    }


def points_inside(lo: np.ndarray, hi: np.ndarray, stride: int, size: np.ndarray) -> np.ndarray:
    """Per box, how many of the grid coordinates ``j*stride + stride//2`` (``0 <= j < size``)
    lie strictly between ``lo`` and ``hi`` (one axis)."""
    c = stride // 2
    lo = lo.astype(np.float64)
    hi = hi.astype(np.float64)
    j_min = np.maximum(np.floor((lo - c) / stride) + 1, 0)
    j_max = np.minimum(np.ceil((hi - c) / stride) - 1, size - 1)
    return np.maximum(j_max - j_min + 1, 0).astype(np.int64)


def candidate_points(
    boxes: np.ndarray, in_h: np.ndarray, in_w: np.ndarray, stride: int, radius: float | None = None
) -> np.ndarray:
    """Per box (``[N, 4]`` xyxy in input pixels; ``in_h``/``in_w`` the input size of each
    box's image), the stride-``stride`` points that are its candidates (module docstring)."""
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    if radius is not None:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        r = radius * stride
        x1, x2 = np.maximum(x1, cx - r), np.minimum(x2, cx + r)
        y1, y2 = np.maximum(y1, cy - r), np.minimum(y2, cy + r)
    nx = points_inside(x1, x2, stride, -(-in_w // stride))
    ny = points_inside(y1, y2, stride, -(-in_h // stride))
    return nx * ny


# --- the figures ---------------------------------------------------------------------------------


def _stats(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"count": 0}
    pct = np.percentile(values.astype(np.float64), PERCENTILES)
    out: dict[str, Any] = {"count": int(values.size), "mean": round(float(values.mean()), 4)}
    out.update({f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, pct)})
    return out


def histogram_edges(top: float) -> np.ndarray:
    """Quarter-octave bin edges (px) from 1 up to at least ``top``."""
    return 2.0 ** (np.arange(0, math.ceil(4 * math.log2(max(top, 2.0))) + 1) / 4)


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts per bin; values below 1 px land in the first bin."""
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts.astype(int).tolist()


def _class_names(categories: list) -> list[str]:
    names = [str(c.get("name", c["id"])) for c in categories]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} (id {c['id']})" if seen[n] > 1 else n for n, c in zip(names, categories)]


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def analyze(ann: Annotations, geo: Geometry) -> dict[str, Any]:
    """All figures of ``ann`` under ``geo`` (JSON-able; see the module docstring)."""
    g = apply_geometry(ann, geo)
    obj = ann.labels >= 0
    boxes = g["boxes"][obj]
    img_of = ann.image[obj]
    in_h, in_w = g["input_h"][img_of], g["input_w"][img_of]
    bw = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    bh = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    sqrt_area = np.sqrt(bw * bh)
    longer = np.maximum(bw, bh)
    n_obj = int(obj.sum())
    strides = sorted(int(s) for s in geo.strides)

    per_stride = []
    any_point = np.zeros(n_obj, dtype=bool)
    finest_none = 0
    for k, s in enumerate(strides):
        n = candidate_points(boxes, in_h, in_w, s, geo.center_sampling_radius)
        any_point |= n > 0
        if k == 0:
            finest_none = int((n == 0).sum())
        per_stride.append(
            {
                "stride": s,
                "objects_with_at_least_1_point": int((n >= 1).sum()),
                "objects_with_at_least_4_points": int((n >= 4).sum()),
            }
        )

    per_image = np.bincount(img_of, minlength=len(ann.heights))
    names = _class_names(ann.categories)
    counts = np.bincount(ann.labels[obj], minlength=len(names)) if names else np.zeros(0, int)
    max_in = int(max(g["input_h"].max(initial=0), g["input_w"].max(initial=0)))
    sizes = sorted({(int(a), int(b)) for a, b in zip(g["input_h"], g["input_w"])})

    edges = histogram_edges(max(max_in, float(longer.max(initial=0.0))))
    out: dict[str, Any] = {
        "source": ann.source,
        "input_size": list(sizes[0]) if len(sizes) == 1 else None,
        "input_size_range": (
            [min(s[0] for s in sizes), min(s[1] for s in sizes)],
            [max(s[0] for s in sizes), max(s[1] for s in sizes)],
        )
        if sizes
        else None,
        "strides": strides,
        "center_sampling_radius": geo.center_sampling_radius,
        "transforms_not_modelled": list(geo.ignored),
        "resize": _describe_resize(geo, g),
        "images": len(ann.heights),
        "images_without_objects": int((per_image == 0).sum()),
        "objects": n_obj,
        "crowd_boxes": int((~obj).sum()),
        "objects_per_image": (
            {
                "min": int(per_image.min()),
                "median": float(np.median(per_image)),
                "max": int(per_image.max()),
                "mean": round(float(per_image.mean()), 4),
            }
            if per_image.size
            else {}
        ),
        "objects_per_class": {n: int(c) for n, c in zip(names, counts)},
        "sqrt_area_px": _stats(sqrt_area),
        "longer_side_px": _stats(longer),
        "tiny_objects": int((longer < TINY_PX).sum()),
        "tiny_definition": f"longer side < {TINY_PX:g} px after the resize",
        "huge_objects": int(((bw > in_w) | (bh > in_h)).sum()),
        "huge_definition": "wider or taller than the network input",
        "per_stride": per_stride,
        "objects_without_point_at_finest_stride": finest_none,
        "objects_without_point_at_any_stride": int((~any_point).sum()),
        "histogram": {
            "edges_px": [round(float(e), 4) for e in edges],
            "longer_side": _histogram(longer, edges),
            "sqrt_area": _histogram(sqrt_area, edges),
        },
    }
    out["warnings"] = _warnings(out, longer, max_in)
    return out


def _describe_resize(geo: Geometry, g: dict[str, np.ndarray]) -> dict[str, Any]:
    rules = []
    for op in geo.ops:
        if op[0] != "resize":
            continue
        (sh, sw), keep, ratio = op[1], op[2], op[3]
        if keep:
            rule = (
                f"Resize img_scale=({sh}, {sw}) keep_ratio: one factor "
                f"min({max(sh, sw)}/max(h, w), {min(sh, sw)}/min(h, w))"
            )
        else:
            rule = f"Resize img_scale=({sh}, {sw}) without keep_ratio: stretched to it"
        if ratio is not None:
            rule += (
                f"; ratio_range {list(ratio)} left at 1 (training scales boxes by a further "
                f"{ratio[0]:g}-{ratio[1]:g}x at random)"
            )
        rules.append(rule)
    return {
        "rule": "; then ".join(rules) if rules else "no Resize: original pixels",
        "scale_x": _stats(g["scale_x"]),
        "scale_y": _stats(g["scale_y"]),
    }


def _warnings(fig: dict[str, Any], longer: np.ndarray, max_in: int) -> list[str]:
    out = []
    n = fig["objects"]
    if not n:
        return ["no objects: every image is empty (or holds only crowd regions)"]
    s0 = fig["strides"][0]
    med = float(np.median(longer))
    if med < 2 * s0:
        want = _round_up(max_in * 2 * s0 / max(med, 1e-6), max(fig["strides"]))
        out.append(
            f"most objects are too small for the smallest stride at this input size: the "
            f"median longer side is {med:.1f} px < 2 x stride {s0}, so a typical object covers "
            f"about one stride-{s0} point. Raise input_size (to about {want}, where the median "
            f"object spans 2 strides) or add a finer stride level (stride {max(s0 // 2, 1)}: "
            f"neck/head out_strides, targets.strides and post_process.strides)"
        )
    fallback = fig["objects_without_point_at_any_stride"]
    if fallback > 0.1 * n:
        out.append(
            f"{fallback} of {n} objects ({100 * fallback / n:.0f}%) contain no grid point at any "
            f"stride and each fall back to the one stride-{s0} point nearest its centre: raise "
            f"input_size or add a finer stride level"
        )
    if fig["tiny_objects"] > 0.25 * n:
        out.append(f"{fig['tiny_objects']} of {n} objects are tiny ({fig['tiny_definition']})")
    if fig["images_without_objects"] > 0.5 * fig["images"]:
        out.append(f"{fig['images_without_objects']} of {fig['images']} images hold no object")
    return out


def geometry_from_transforms(
    transforms: Sequence[tuple[str, dict[str, Any]]],
    strides: Sequence[int],
    radius: float | None = None,
    fallback_input: tuple[int, int] | None = None,
) -> Geometry:
    """A :class:`Geometry` from ``(transform type, its arguments)`` pairs."""
    ops: list = []
    ignored: list[str] = []
    for name, kw in transforms:
        if name == "Resize":
            scale = tuple(int(v) for v in kw["img_scale"])
            ratio = kw.get("ratio_range")
            ops.append(
                (
                    "resize",
                    scale,
                    bool(kw.get("keep_ratio", True)),
                    tuple(float(r) for r in ratio) if ratio is not None else None,
                )
            )
        elif name == "RandomCrop":
            ops.append(("crop", tuple(int(v) for v in kw["size"])))
        elif name == "Pad":
            if kw.get("size") is not None:
                ops.append(("pad_size", tuple(int(v) for v in kw["size"])))
            elif kw.get("divisor") is not None:
                ops.append(("pad_divisor", int(kw["divisor"])))
        elif name not in NO_GEOMETRY:
            ignored.append(name)
    if not strides:
        raise FcosUserError(
            "no strides to analyze against", hint="the model's targets.strides or head.out_strides"
        )
    return Geometry(
        ops=tuple(ops),
        strides=tuple(int(s) for s in strides),
        center_sampling_radius=radius,
        fallback_input=fallback_input,
        ignored=tuple(ignored),
    )
