"""Decoding against PIL as the reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from fcos_plugin_coco.decode import (
    DecodeError,
    ImageInfo,
    ImageLimits,
    choose_orientation,
    decode_image,
    probe,
)


def _save(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb(helpers):
    return helpers.scene(np.random.default_rng(3), 37, 53)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_matches_pil(rgb, mode):
    data = _save(rgb, "JPEG", mode, quality=90)
    ours = decode_image(data)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == (37, 53, 3) and ours.flags.c_contiguous
    # simplejpeg and PIL both use libjpeg-turbo's default (islow DCT, fancy upsampling)
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_progressive_jpeg(rgb):
    data = _save(rgb, "JPEG", quality=90, progressive=True)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(decode_image(data).astype(int) - ref).max() <= 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA"])
def test_png_modes(rgb, mode):
    data = _save(rgb, "PNG", mode)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), ref)


def test_16bit_png_keeps_the_high_byte():
    wide = np.arange(12 * 10, dtype=np.uint16).reshape(10, 12) * 500
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    np.testing.assert_array_equal(out[..., 0], (wide >> 8).astype(np.uint8))
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(rgb, "PNG", exif=exif.tobytes())
    info = probe(data)
    assert info.orientation == orientation and (info.width, info.height) == (53, 37)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data, orientation), ref)


def test_choose_orientation():
    info = ImageInfo("JPEG", "RGB", 60, 40, 6)
    assert choose_orientation(info, 60, 40) == 1  # json in the stored frame: COCO convention
    assert choose_orientation(info, 40, 60) == 6  # json in the displayed frame
    assert choose_orientation(info, 50, 50) is None
    assert choose_orientation(ImageInfo("JPEG", "RGB", 60, 40, 3), 60, 40) == 1
    assert choose_orientation(ImageInfo("JPEG", "RGB", 60, 40, 1), 40, 60) is None


def test_bad_data(rgb):
    data = _save(rgb, "JPEG", quality=90)
    for bad, reason in [
        (data[: len(data) // 2], "corrupt_image"),
        (b"\x00" * 100, "not_an_image"),
        (b"", "empty_file"),
    ]:
        read = probe if reason == "empty_file" else decode_image
        with pytest.raises(DecodeError) as err:
            read(bad)
        assert err.value.reason == reason


def test_limits(rgb):
    data = _save(rgb, "JPEG")
    with pytest.raises(DecodeError) as err:
        decode_image(data, limits=ImageLimits(max_pixels=100))
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as err:
        probe(_save(rgb, "PNG"), ImageLimits(max_pixels=100))
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as err:
        decode_image(data, limits=ImageLimits(max_bytes=10))
    assert err.value.reason == "file_too_large"
    with pytest.raises(ValueError, match="must be positive"):
        ImageLimits(max_pixels=0)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data needed to trip the guard)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(50_000, 50_000)  # 2.5 G pixels, 7.5 GB as RGB
    for call in (probe, decode_image):
        with pytest.raises(DecodeError) as err:
            call(bomb)
        assert err.value.reason in ("too_many_pixels", "not_an_image")
    with pytest.raises(DecodeError) as err:
        probe(_png_header_only(9000, 9000))  # under PIL's own bomb limit, over ours
    assert err.value.reason == "too_many_pixels"
