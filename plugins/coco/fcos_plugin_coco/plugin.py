"""Registration of the COCO plugin's components and commands (torch-free).

Every factory is an import string, so ``fcos --help`` and ``fcos check`` never import torch,
lmdb or pycocotools through this module.
"""

from __future__ import annotations

import argparse
import math

from fcos_core import hookimpl
from fcos_plugin_coco import analyze_cmd, val_cmd
from fcos_plugin_coco import schema as s

_PKG = "fcos_plugin_coco"


@hookimpl
def register_datasets(register):
    register("Coco", factory=f"{_PKG}.dataset:Coco", schema=s.CocoArgs)
    register("CocoFolder", factory=f"{_PKG}.dataset:CocoFolder", schema=s.CocoFolderArgs)


@hookimpl
def register_transforms(register):
    register("Resize", factory=f"{_PKG}.transforms.resize:Resize", schema=s.ResizeArgs)
    register("RandomCrop", factory=f"{_PKG}.transforms.crop:RandomCrop", schema=s.RandomCropArgs)
    register("Pad", factory=f"{_PKG}.transforms.pad:Pad", schema=s.PadArgs)
    register("RandomFlip", factory=f"{_PKG}.transforms.flip:RandomFlip", schema=s.RandomFlipArgs)
    register("AugmentHSV", factory=f"{_PKG}.transforms.hsv:AugmentHSV", schema=s.AugmentHSVArgs)
    register("ToTensor", factory=f"{_PKG}.transforms.tensor:ToTensor", schema=s.ToTensorArgs)
    register("Normalize", factory=f"{_PKG}.transforms.tensor:Normalize", schema=s.NormalizeArgs)


@hookimpl
def register_collates(register):
    register(
        "collate_2d",
        factory=f"{_PKG}.collate:collate_2d",
        schema=None,
        doc="stack images into [B, 3, H, W]; keep boxes, labels and shapes as lists",
    )


@hookimpl
def register_metrics(register):
    register(
        "COCODetectionMetric",
        factory=f"{_PKG}.metric:COCODetectionMetric",
        schema=s.COCODetectionMetricArgs,
    )


def _size(unit: str, limit: float):
    """argparse type: a finite number in (0, ``limit``] (nan, inf and 0 are refused here, so
    they never reach the byte arithmetic as a traceback)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0 or value > limit:
            raise argparse.ArgumentTypeError(
                f"must be a finite number of {unit} > 0 and <= {limit:g}, got {text!r}"
            )
        return value

    return parse


def _pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of the images named by file_name")
    p.add_argument("--ann", required=True, help="COCO instances json")
    p.add_argument(
        "--out",
        required=True,
        help="LMDB folder to write (an interrupted packing is resumed; a complete "
        "LMDB is refused unless --replace)",
    )
    p.add_argument(
        "--split-name",
        default=None,
        help="name stored in the LMDB (default: the --out folder name)",
    )
    p.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="bad image or annotation: skip it and report it (default), or stop",
    )
    p.add_argument(
        "--summary",
        default=None,
        help="JSON summary path (default: <out>.summary.json next to the LMDB)",
    )
    p.add_argument(
        "--max-json-mb",
        type=_size("MiB", 2.0**20),
        default=2048.0,
        help="refuse annotation files larger than this (MiB)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=64_000_000,
        help="refuse images with more pixels (decompression-bomb guard)",
    )
    p.add_argument(
        "--max-image-mb",
        type=_size("MiB", 2.0**20),
        default=64.0,
        help="refuse image files larger than this (MiB)",
    )
    p.add_argument(
        "--max-map-gb",
        type=_size("GiB", 2.0**20),
        default=1024.0,
        help="upper bound of the LMDB map size (GiB)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing LMDB at --out: pack into <out>.fcos-pack-new and "
        "swap it in when complete (readers of the old one are not disturbed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the demo dataset into")
    p.add_argument("--num-train", type=int, default=2000, help="training images")
    p.add_argument("--num-val", type=int, default=200, help="validation images")
    p.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="longest image side in pixels (each side varies down to 3/4 of it)",
    )
    p.add_argument("--min-object", type=int, default=10, help="smallest object size (px)")
    p.add_argument("--max-object", type=int, default=64, help="largest object size (px)")
    p.add_argument("--max-objects", type=int, default=5, help="most objects per image (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument(
        "--force",
        action="store_true",
        help="regenerate even if DIR holds demo data made with other settings "
        "(files the demo did not write are never replaced)",
    )


@hookimpl
def register_commands(register):
    register(
        "pack-coco",
        factory=f"{_PKG}.commands:pack_coco_command",
        add_arguments=_pack_args,
        doc="pack a COCO image folder + instances json into an LMDB, reporting bad input",
    )
    register(
        "demo-data",
        factory=f"{_PKG}.commands:demo_data_command",
        add_arguments=demo_args,
        doc="generate the synthetic shapes detection dataset (COCO json + JPEGs + LMDBs)",
    )
    register(
        "analyze-data",
        factory=f"{_PKG}.analyze_cmd:analyze_data_command",
        add_arguments=analyze_cmd.add_arguments,
        doc="box sizes, points per stride, boxes per image and class balance of a "
        "config's training data, against its input size and strides (JSON + PNG)",
    )
    register(
        "val",
        factory=f"{_PKG}.val_cmd:val_command",
        add_arguments=val_cmd.add_arguments,
        doc="score one stage's model (or the compiled artifact) on the validation set or "
        "other COCO data: COCO summary, per-class AP, PR curves, confusion matrix and "
        "the worst images, in a run folder",
    )
