"""Read one image of the json from the image folder, checked against its record.

Shared by the packer (which stores the bytes) and :class:`~fcos_plugin_coco.dataset.CocoFolder`
(which decodes them), so both make the same decisions for the same file.
"""

from __future__ import annotations

import os

import attrs
import numpy as np

from fcos_plugin_coco.annotations import ImageRecord
from fcos_plugin_coco.decode import (
    DecodeError,
    ImageInfo,
    ImageLimits,
    choose_orientation,
    decode_image,
    describe,
    probe,
)


@attrs.frozen(eq=False)
class LoadedImage:
    """Encoded bytes, decoded pixels, the orientation applied, and conversion notes."""

    data: bytes
    rgb: np.ndarray
    orientation: int
    info: ImageInfo
    notes: list  # [(reason, detail)]


def read_file(path: str, limits: ImageLimits) -> bytes:
    """The bytes of an image file, or :class:`DecodeError` (missing / unreadable / too large)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DecodeError("missing_file", f"{path}: {exc.strerror}") from exc
    if size > limits.max_bytes:
        raise DecodeError("file_too_large", f"{size} bytes > limit {limits.max_bytes}")
    try:
        with open(path, "rb") as f:
            return f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise DecodeError("unreadable_file", f"{path}: {exc.strerror}") from exc


def load_checked(images_dir: str, rec: ImageRecord, limits: ImageLimits) -> LoadedImage:
    """Read, probe and decode ``rec``'s file; the decoded size must be the json's size."""
    data = read_file(os.path.join(images_dir, rec.file_name), limits)
    info = probe(data, limits)
    orientation = choose_orientation(info, rec.width, rec.height)
    if orientation is None:
        raise DecodeError(
            "size_mismatch",
            f"the json says {rec.width}x{rec.height} but the image is "
            f"{info.width}x{info.height}"
            + (f" (EXIF orientation {info.orientation})" if info.orientation != 1 else ""),
        )
    rgb = decode_image(data, orientation, limits)
    if rgb.shape[:2] != (rec.height, rec.width):  # header lied about the size
        raise DecodeError(
            "size_mismatch",
            f"decoded {rgb.shape[1]}x{rgb.shape[0]}, json says {rec.width}x{rec.height}",
        )
    notes = [(n, f"{info.format} {info.mode} converted to RGB") for n in describe(info)]
    if info.orientation != 1:
        if orientation == 1:
            why = (
                "ignored: the json size matches the stored pixels, so boxes are in the "
                "stored frame (COCO convention)"
            )
        else:
            why = "applied at decode: the json size matches the rotated image"
        notes.append(("exif_orientation", f"EXIF orientation {info.orientation} {why}"))
    return LoadedImage(data, rgb, orientation, info, notes)
