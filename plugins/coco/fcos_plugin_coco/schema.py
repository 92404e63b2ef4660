"""Argument schemas of the COCO plugin's components (torch-free: ``fcos check`` imports this)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg, component_list

# --- datasets ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CocoArgs:
    """COCO detection dataset read from an LMDB written by `fcos pack-coco`."""

    data_path: str = arg(
        help="folder of the LMDB written by `fcos pack-coco`, e.g. ./tmp_data/mscoco/train_lmdb"
    )
    transforms: list = component_list(
        "transforms", help="transforms applied to each sample, in order"
    )
    demo_if_missing: bool = arg(
        False,
        help="when data_path does not exist, generate the demo "
        "dataset into its parent folder first",
    )


@attrs.frozen(kw_only=True)
class CocoFolderArgs:
    """COCO detection dataset read straight from an image folder and a COCO json."""

    data_path: str = arg(help="folder holding the images named by the json's file_name")
    ann_file: str = arg(help="COCO instances json, e.g. instances_val2017.json")
    transforms: list = component_list(
        "transforms", help="transforms applied to each sample, in order"
    )
    demo_if_missing: bool = arg(
        False,
        help="when ann_file does not exist, generate the demo dataset into its parent folder first",
    )


# --- transforms -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ResizeArgs:
    """Resize the image and its boxes (mmcv-style rescale when keep_ratio)."""

    img_scale: tuple[int, int] = arg(
        help="target (height, width); with keep_ratio the long and short edges fit max/min of it"
    )
    ratio_range: tuple[float, float] | None = arg(
        None, help="(min, max) random multiplier of img_scale for scale augmentation"
    )
    keep_ratio: bool = arg(True, help="keep the aspect ratio (else stretch to img_scale)")


@attrs.frozen(kw_only=True)
class RandomCropArgs:
    """Crop a random window; boxes are clipped and boxes left empty are dropped."""

    size: tuple[int, int] = arg(
        help="crop (height, width); smaller images are not cropped along that side"
    )


@attrs.frozen(kw_only=True)
class PadArgs:
    """Pad the image at the bottom and right to a fixed size or a multiple of divisor."""

    divisor: int | None = arg(None, help="pad height and width up to a multiple of this")
    size: tuple[int, int] | None = arg(None, help="pad to exactly (height, width)")
    pad_val: int = arg(0, help="value of padded pixels (0..255)")


@attrs.frozen(kw_only=True)
class RandomFlipArgs:
    """Flip the valid image area horizontally (px) and/or vertically (py) at random."""

    px: float = arg(0.5, help="probability of a horizontal flip")
    py: float = arg(0.0, help="probability of a vertical flip")


@attrs.frozen(kw_only=True)
class AugmentHSVArgs:
    """Random hue/saturation/value gains (YOLO-style lookup tables)."""

    hgain: float = arg(0.015, help="hue gain: hue is multiplied by 1 +- up to this")
    sgain: float = arg(0.7, help="saturation gain: multiplied by 1 +- up to this")
    vgain: float = arg(0.4, help="value gain: multiplied by 1 +- up to this")


@attrs.frozen(kw_only=True)
class ToTensorArgs:
    """Convert a numpy sample to torch tensors (image to float CHW, optionally YUV444)."""

    to_yuv: bool = arg(
        False, help="convert RGB to YUV444 (BT.601 full range), as the BPU pyramid input"
    )


@attrs.frozen(kw_only=True)
class NormalizeArgs:
    """Normalize the image tensor: (img - mean) / std, scalars or per channel."""

    mean: float | list[float] = arg(help="mean subtracted: a number or 3 numbers")
    std: float | list[float] = arg(help="divisor: a number or 3 numbers, all > 0")


# --- metric -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class COCODetectionMetricArgs:
    """COCO bbox mAP (the 12 standard numbers) via pycocotools or faster-coco-eval."""

    ann_file: str = arg(help="COCO instances json of the evaluated split")
    demo_if_missing: bool = arg(
        False,
        help="when ann_file does not exist, generate the demo dataset into its parent folder first",
    )
    backend: Literal["auto", "pycocotools", "faster_coco_eval"] = arg(
        "auto", help="evaluation backend; auto uses faster_coco_eval when it is installed"
    )
