"""The front end shared by ``fcos predict`` (a config's model, any stage) and a backend's
``fcos infer`` (a compiled artifact): sources in, detections out.

The command supplies ``detect(rgbs) -> detections per image`` (boxes in the pictures' own
pixels); this module does everything around it: opens the sources
(:mod:`fcos_core.cli.image_source`), reports and skips pictures that cannot be read, batches
``--batch-size`` pictures per call, shows a progress bar, prints the results, writes
``predictions.json`` (COCO results format) with ``--out``, and draws images or an annotated
video with ``--save-vis``.

``--out DIR`` writes, never replacing a file (``-2``, ``-3``, ... when taken):

* ``predictions.json``: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``
  in original pixels, what ``pycocotools``' ``loadRes`` reads. Category ids are the
  annotation file's (label ``i`` = the ``i``-th smallest id) when the command knows one, else
  ``label + 1``. Image ids are an LMDB's own ids, else 1, 2, ... in source order.
* ``predictions.images.json``: ``{"images": [{"id", "file_name", "width", "height"}],
  "categories": [...], "skipped": [{"file_name", "error"}]}``: which picture each id is, and
  what could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from fcos_core.errors import FcosUserError

#: more pictures than this are summed up rather than listed one by one (without --json)
MAX_LISTED = 20

Detect = Callable[[list[Any]], list[list[dict[str, Any]]]]


def add_source_arguments(
    p: argparse.ArgumentParser, *, positional: bool = False, score_default: float | None = 0.3
) -> None:
    """The options both commands take (``positional``: the sources are positional
    arguments, as ``fcos infer ARTIFACT SOURCE...`` has them)."""
    help_src = (
        "image files, folders of images, glob patterns (quoted), an LMDB folder "
        "(fcos pack-coco) or video files; pictures that cannot be read are reported "
        "and skipped"
    )
    if positional:
        p.add_argument("images", nargs="+", metavar="SOURCE", help=help_src)
    else:
        p.add_argument(
            "--images",
            "--source",
            dest="images",
            nargs="+",
            required=True,
            metavar="SOURCE",
            help=help_src,
        )
    p.add_argument(
        "--batch-size", type=int, default=8, help="pictures per forward pass (default 8)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write predictions.json (COCO results) and predictions.images.json "
        "into DIR (-2, -3, ... when taken: never overwrites)",
    )
    p.add_argument(
        "--save-vis",
        default=None,
        metavar="DIR",
        help="draw the detections: each image as <stem>_det.png, each video as "
        "<stem>_det.mp4, in DIR (-2, ... when taken: never overwrites)",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=score_default,
        help="keep detections scoring at least this"
        + (
            f" (default {score_default})"
            if score_default is not None
            else " (default: the artifact's own)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print every picture's detections as JSON")


def check_arguments(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise FcosUserError(
            f"--batch-size must be at least 1, got {args.batch_size}", hint="e.g. --batch-size 8"
        )


def _batches(frames: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_frontend(
    args: argparse.Namespace,
    detect: Detect,
    *,
    categories: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Detect on every picture of ``args.images`` with ``detect``; print, write, draw.
    ``categories`` (``[{"id", "name"}]`` sorted by id) name the labels and give the COCO
    category ids. Returns the exit code (0, also when pictures were skipped)."""
    from fcos_core.cli.detections_output import (
        VideoVis,
        claim_path,
        prepare_vis_folder,
        print_detections,
        save_vis,
    )
    from fcos_core.cli.image_source import open_sources
    from fcos_core.engine.progress import Progress, progress_enabled

    check_arguments(args)
    say = log or (lambda m: print(m, file=sys.stderr))
    sources = open_sources(list(args.images))
    if args.save_vis:
        prepare_vis_folder(args.save_vis)
    if args.out:
        prepare_vis_folder(args.out)
    names = [str(c.get("name", c["id"])) for c in categories] if categories else None
    cat_ids = [int(c["id"]) for c in categories] if categories else None
    total = sum(s.count or 0 for s in sources)
    bar = Progress(total, "predict", progress_enabled(0))
    if log is None:
        say = bar.write  # reports go above the bar, not into it
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    coco: list[dict[str, Any]] = []
    used_ids: set[int] = set()
    next_id = 1
    try:
        for source in sources:
            video = (
                VideoVis(args.save_vis, source.name, source.fps)
                if args.save_vis and source.kind == "video"
                else None
            )
            try:
                for batch in _batches(source.frames(), args.batch_size):
                    good = [f for f in batch if f.rgb is not None]
                    for f in batch:
                        if f.rgb is None:
                            skipped.append({"file_name": f.name, "error": str(f.error)})
                            say(f"skipped: {f.error}")
                    dets_per = detect([f.rgb for f in good]) if good else []
                    for f, dets in zip(good, dets_per):
                        h, w = f.rgb.shape[:2]
                        image_id = (
                            f.image_id
                            if f.image_id is not None and f.image_id not in used_ids
                            else None
                        )
                        if image_id is None:
                            while next_id in used_ids:
                                next_id += 1
                            image_id = next_id
                        used_ids.add(image_id)
                        if names:
                            for d in dets:
                                if 0 <= d["label"] < len(names):
                                    d["name"] = names[d["label"]]
                        images.append(
                            {"id": image_id, "file_name": f.name, "width": w, "height": h}
                        )
                        for d in dets:
                            x1, y1, x2, y2 = d["box"]
                            cat = (
                                cat_ids[d["label"]]
                                if cat_ids and 0 <= d["label"] < len(cat_ids)
                                else d["label"] + 1
                            )
                            coco.append(
                                {
                                    "image_id": image_id,
                                    "category_id": int(cat),
                                    "bbox": [
                                        round(x1, 2),
                                        round(y1, 2),
                                        round(x2 - x1, 2),
                                        round(y2 - y1, 2),
                                    ],
                                    "score": round(float(d["score"]), 5),
                                }
                            )
                        entry: dict[str, Any] = {
                            "image": f.name,
                            "image_id": image_id,
                            "detections": dets,
                        }
                        if video is not None:
                            video.write(f.rgb, dets)
                        elif args.save_vis:
                            entry["vis"] = str(save_vis(f.rgb, dets, args.save_vis, f.name))
                        results.append(entry)
                    for _ in batch:
                        bar.update()
            finally:
                if video is not None:
                    say(f"annotated video: {video.close()}")
    finally:
        bar.close()
    if args.json:
        print_detections(results, True)
    elif len(results) <= MAX_LISTED:
        print_detections(results, False, max_per_image=20)
    else:
        n = sum(len(r["detections"]) for r in results)
        print(
            f"{len(results)} picture(s), {n} detection(s)"
            + ("" if args.out else "; pass --out DIR to keep them as predictions.json")
        )
    if skipped:
        say(f"{len(skipped)} picture(s) could not be read and were skipped")
    if args.out:
        path, fh = claim_path(args.out, "predictions", ".json")
        with fh:
            fh.write(json.dumps(coco).encode("utf-8"))
        side = path.with_name(path.stem + ".images.json")
        try:
            fh2 = open(side, "x", encoding="utf-8")  # noqa: SIM115 - the with below closes it
        except FileExistsError:  # someone else's file next to ours: leave it alone
            raise FcosUserError(
                f"{side} already exists (predictions were written to {path})",
                hint="pass an --out folder without predictions files",
            ) from None
        with fh2:
            json.dump(
                {
                    "images": images,
                    "categories": categories
                    or [
                        {"id": i + 1, "name": str(i)}
                        for i in sorted({d["category_id"] - 1 for d in coco})
                    ],
                    "skipped": skipped,
                },
                fh2,
                indent=1,
            )
        say(
            f"predictions: {path} ({len(coco)} detection(s) on {len(images)} picture(s); "
            f"pictures: {side})"
        )
    sys.stdout.flush()
    return 0


def map_back(
    det: dict[str, Any],
    sample: dict[str, Any],
    size: tuple[int, int],
    score_threshold: float | None,
) -> list[dict[str, Any]]:
    """A model's detections on the transformed picture -> ``[{"label", "score", "box"}]`` in
    the original picture's pixels (undoing the transforms' scale and crop offset, clipped)."""
    import numpy as np

    h, w = float(size[0]), float(size[1])
    sx, sy = (float(v) for v in np.asarray(sample["scale_factor"]).reshape(-1)[:2])
    ox, oy = (float(v) for v in np.asarray(sample.get("crop_offset", (0, 0))).reshape(-1)[:2])
    out = []
    for box, score, label in zip(_list(det["boxes"]), _list(det["scores"]), _list(det["labels"])):
        if score_threshold is not None and score < score_threshold:
            continue
        x1, y1, x2, y2 = (
            (box[0] + ox) / sx,
            (box[1] + oy) / sy,
            (box[2] + ox) / sx,
            (box[3] + oy) / sy,
        )
        out.append(
            {
                "label": int(label),
                "score": round(float(score), 4),
                "box": [
                    round(min(max(x1, 0.0), w), 1),
                    round(min(max(y1, 0.0), h), 1),
                    round(min(max(x2, 0.0), w), 1),
                    round(min(max(y2, 0.0), h), 1),
                ],
            }
        )
    return out


def _list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value)
