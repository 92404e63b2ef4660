"""Bodies of ``fcos pack-coco`` and ``fcos demo-data`` (imported only when they run)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from fcos_core.errors import FcosUserError


def pack_coco_command(args: argparse.Namespace, host: object = None) -> int:
    from fcos_plugin_coco.decode import ImageLimits
    from fcos_plugin_coco.packer import default_summary_path, pack_coco

    for option, value in (
        ("--max-image-mb", args.max_image_mb),
        ("--max-json-mb", args.max_json_mb),
        ("--max-map-gb", args.max_map_gb),
    ):
        if not (math.isfinite(value) and value > 0):  # nan/inf would fail in int() below
            raise FcosUserError(
                f"{option} must be a finite number > 0, got {value}",
                hint=f"pass a size such as {option} 64",
            )
    try:
        limits = ImageLimits(max_pixels=args.max_pixels, max_bytes=int(args.max_image_mb * 2**20))
    except ValueError as exc:
        raise FcosUserError(str(exc), hint="--max-pixels and --max-image-mb must be > 0") from exc
    summary_path = args.summary or default_summary_path(args.out)
    start = time.perf_counter()
    report = pack_coco(
        args.images,
        args.ann,
        args.out,
        split_name=args.split_name,
        on_error=args.on_error,
        summary_path=summary_path,
        limits=limits,
        max_json_bytes=int(args.max_json_mb * 2**20),
        max_map_bytes=int(args.max_map_gb * 2**30),
        progress=not args.no_progress and sys.stderr.isatty(),
        replace=args.replace,
    )
    print(f"packed {args.ann} into {args.out} in {time.perf_counter() - start:.1f} s")
    print(report.render())
    print(f"summary: {summary_path}")
    return 0


def demo_data_command(args: argparse.Namespace, host: object = None) -> int:
    from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo

    try:
        params = DemoParams(
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            min_object=args.min_object,
            max_object=args.max_object,
            max_objects=args.max_objects,
            seed=args.seed,
        )
    except ValueError as exc:
        raise FcosUserError(
            f"demo-data: {exc}",
            hint="change --image-size / --min-object / --max-object / "
            "--max-objects (see `fcos demo-data --help`)",
        ) from exc
    start = time.perf_counter()
    ensure_demo(args.out, params, force=args.force, progress=sys.stderr.isatty())
    root = os.path.abspath(args.out)
    print(
        f"demo data in {root} ({time.perf_counter() - start:.1f} s): "
        f"{params.num_train} train / {params.num_val} val images, category ids 1,3,5,7,9"
    )
    for name in (
        "train_lmdb",
        "val_lmdb",
        "instances_train.json",
        "instances_val.json",
        "images/train",
        "images/val",
    ):
        print(f"  {os.path.join(root, name)}")
    return 0
