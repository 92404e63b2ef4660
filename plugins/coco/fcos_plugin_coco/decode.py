"""Image decoding to RGB uint8 with bounded sizes, shared by the packer and both datasets.

Every image the pipeline sees goes through :func:`decode_image`, so the LMDB and the folder
give identical pixels. JPEGs decode with simplejpeg (libjpeg-turbo, the fastest option here);
CMYK/YCCK JPEGs, PNGs and every other format go through PIL and are converted to RGB
(grayscale is replicated into three channels, alpha is dropped, 16-bit gray is scaled to 8 bits).

EXIF orientation: COCO's annotations live in the *stored* pixel frame (pycocotools and the
COCO annotation tools ignore EXIF), so the default is to leave stored pixels as they are. The
frame is chosen per image by :func:`choose_orientation` to match the json's width/height: when
the json gives the *rotated* size of an EXIF-rotated photo (annotated as viewers show it), the
EXIF transpose is applied at decode so boxes and pixels agree. The packer reports every image
with an EXIF orientation and which frame it used.
"""

from __future__ import annotations

import io

import attrs
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

#: EXIF tag of the orientation
_ORIENTATION_TAG = 0x0112
#: orientations whose display frame swaps width and height
_SWAPS_AXES = frozenset({5, 6, 7, 8})


@attrs.frozen
class ImageLimits:
    """Bounds on what is decoded (decompression-bomb and memory guards)."""

    max_pixels: int = 64_000_000
    max_bytes: int = 64 * 1024 * 1024

    def __attrs_post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_bytes <= 0:
            raise ValueError("ImageLimits: max_pixels and max_bytes must be positive")


class DecodeError(Exception):
    """An image that cannot be used; ``reason`` is a short machine key, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@attrs.frozen
class ImageInfo:
    """What the header says, before decoding pixels."""

    format: str  # "JPEG", "PNG", ...
    mode: str  # PIL mode: "RGB", "L", "CMYK", ...
    width: int  # stored frame
    height: int
    orientation: int  # EXIF orientation 1..8 (1 when absent)


def probe(data: bytes, limits: ImageLimits = ImageLimits()) -> ImageInfo:
    """Read the header only; raises :class:`DecodeError` for non-images and oversized ones."""
    if len(data) > limits.max_bytes:
        raise DecodeError("file_too_large", f"{len(data)} bytes > limit {limits.max_bytes}")
    if len(data) == 0:
        raise DecodeError("empty_file", "0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            fmt = im.format or "unknown"
            mode = im.mode
            _check_pixels(width, height, limits)
            try:
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
                orientation = 1
    except DecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DecodeError("not_an_image", str(exc)) from exc
    except Exception as exc:
        raise DecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    if orientation not in range(1, 9):
        orientation = 1
    return ImageInfo(fmt, mode, width, height, orientation)


def choose_orientation(info: ImageInfo, width: int, height: int) -> int | None:
    """The EXIF orientation to apply so the decoded size is the json's (width, height).

    Returns 1 (stored frame, the COCO convention), the EXIF orientation (apply it), or None when
    neither frame has the json's size.
    """
    if (info.width, info.height) == (width, height):
        return 1
    if info.orientation in _SWAPS_AXES and (info.height, info.width) == (width, height):
        return info.orientation
    return None


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt_image", f"header says {width}x{height}")
    if width * height > limits.max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} > limit {limits.max_pixels} pixels")


def decode_image(
    data: bytes, orientation: int = 1, limits: ImageLimits = ImageLimits()
) -> np.ndarray:
    """Decode to a C-contiguous ``uint8`` [H, W, 3] RGB array, then apply ``orientation``.

    Raises :class:`DecodeError` for corrupt or truncated data and for oversized images.
    """
    if len(data) > limits.max_bytes:
        raise DecodeError("file_too_large", f"{len(data)} bytes > limit {limits.max_bytes}")
    rgb = None
    if data[:2] == b"\xff\xd8":
        rgb = _decode_jpeg_fast(data, limits)
    if rgb is None:
        rgb = _decode_pil(data, limits)
    return _apply_orientation(rgb, orientation)


def _decode_jpeg_fast(data: bytes, limits: ImageLimits) -> np.ndarray | None:
    """simplejpeg for gray/YCbCr/RGB JPEGs; None to let PIL handle the rest (CMYK, YCCK)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # PIL gives the precise error (or copes with an unusual marker layout)
    _check_pixels(width, height, limits)
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None
    try:
        # strict: a truncated or damaged stream is an error, not a grey-filled image
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise DecodeError("corrupt_image", f"JPEG: {exc}") from exc


def _decode_pil(data: bytes, limits: ImageLimits) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.size[0], im.size[1], limits)
            im.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES stays False)
            return _to_rgb(im)
    except DecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DecodeError("not_an_image", str(exc)) from exc
    except Exception as exc:
        raise DecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        arr = np.asarray(im)
    elif im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit gray: PIL's convert("RGB") would clip at 255, so scale the top 8 bits instead
        wide = np.asarray(im).astype(np.int64)
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        # L, 1, P, LA, RGBA, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, ...
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Same result as PIL's ``ImageOps.exif_transpose`` for EXIF orientation 1..8."""
    if orientation == 1:
        return rgb
    if orientation == 2:
        out = rgb[:, ::-1]
    elif orientation == 3:
        out = rgb[::-1, ::-1]
    elif orientation == 4:
        out = rgb[::-1]
    elif orientation == 5:
        out = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(rgb, k=-1)
    elif orientation == 7:
        out = rgb.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        out = np.rot90(rgb, k=1)
    else:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.ascontiguousarray(out)


def describe(info: ImageInfo) -> list[str]:
    """Notes the packer reports for an image that needed a conversion."""
    notes: list[str] = []
    if info.format != "JPEG":
        notes.append(f"format_{info.format.lower()}")
    if info.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "LA"):
        notes.append("grayscale")
    elif info.mode in ("CMYK", "YCCK"):
        notes.append("cmyk")
    elif info.mode not in ("RGB",):
        notes.append(f"mode_{info.mode.lower().replace(';', '_')}")
    return notes
