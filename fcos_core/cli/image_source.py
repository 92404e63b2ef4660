"""Where ``fcos predict`` and a backend's ``fcos infer`` get their pictures: the one image
loader and the source kinds (files, folders, globs, an LMDB, a video).

Every picture is read by :func:`load_rgb` / :func:`decode_rgb`: EXIF orientation applied (the
picture as viewers show it), at most :data:`MAX_PIXELS` pixels (decompression bombs), any
format PIL reads, converted to RGB uint8. A picture that cannot be read is not fatal: it comes
out as a :class:`Frame` with ``error`` set, which the caller reports and skips. A source that
does not exist at all (a mistyped path, a glob matching nothing) is a user error, raised before
any work starts.

Sources, from each command-line argument:

* an existing folder holding ``data.mdb``: an LMDB written by ``fcos pack-coco`` (read with
  fcos-plugin-coco; the frames keep the dataset's image ids);
* another existing folder: its image files (by extension), sorted by name, not recursive;
* an existing file with a video extension (:data:`VIDEO_EXTS`): its frames, decoded by OpenCV;
* any other existing file: one image;
* a pattern with ``*``, ``?`` or ``[`` (quote it for the shell): the matching image and video
  files, sorted (``**`` matches folders recursively).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from fcos_core.errors import FcosUserError

#: refuse pictures above this many pixels (decompression bombs)
MAX_PIXELS = 100_000_000
#: at most this many bytes are read from one image file
MAX_IMAGE_BYTES = 256 * 1024 * 1024
IMAGE_EXTS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jfif",
    }
)
VIDEO_EXTS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts"}
)


class UnreadableImage(Exception):
    """A picture that cannot be used (the message says why); reported and skipped."""


def decode_rgb(data: bytes, name: str = "image") -> Any:
    """Encoded image bytes -> HxWx3 uint8 RGB, EXIF orientation applied."""
    import io
    import warnings

    import numpy as np
    from PIL import Image, ImageOps

    before = Image.MAX_IMAGE_PIXELS  # PIL's limit is global: set it for this read only
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between MAX_PIXELS and twice that: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise UnreadableImage(
                        f"{name}: {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS}"
                    )
                # convert() decodes every pixel, so a truncated file fails here, not later
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(
            f"{name}: the image is over the limit of {MAX_PIXELS} pixels (a decompression bomb?)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged data
        raise UnreadableImage(
            f"{name}: cannot read the image ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = before


def load_rgb(path: str | os.PathLike[str]) -> Any:
    """The image file ``path`` as HxWx3 uint8 RGB (see :func:`decode_rgb`); a missing or
    unreadable file raises :class:`UnreadableImage`."""
    from fcos_core.bounded_read import ReadRefused, read_regular_file

    try:
        data = read_regular_file(Path(path), MAX_IMAGE_BYTES)
    except ReadRefused as why:
        raise UnreadableImage(
            f"{path}: {why.kind.replace('_', ' ')}" + (f" ({why.detail})" if why.detail else "")
        ) from None
    return decode_rgb(data, str(path))


@attrs.frozen
class Frame:
    """One picture of a source: ``rgb`` (None when it could not be read: ``error`` says why);
    ``image_id`` is the LMDB's id, else None (the caller numbers them)."""

    name: str
    rgb: Any = None
    error: str | None = None
    image_id: int | None = None


@attrs.define
class Source:
    """One source: ``kind`` is ``images``, ``lmdb`` or ``video``; ``count`` is the number of
    frames when known beforehand (a video's is the container's estimate)."""

    kind: str
    name: str
    paths: list[str] = attrs.field(factory=list)  # kind "images"
    count: int | None = None
    fps: float | None = None

    def frames(self) -> Iterator[Frame]:
        if self.kind == "images":
            for path in self.paths:
                try:
                    yield Frame(path, load_rgb(path))
                except UnreadableImage as exc:
                    yield Frame(path, error=str(exc))
        elif self.kind == "lmdb":
            yield from _lmdb_frames(self.name)
        else:
            yield from _video_frames(self)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_lmdb(path: Path) -> bool:
    return (path / "data.mdb").is_file()


def open_sources(specs: list[str]) -> list[Source]:
    """The sources the arguments name, in order (consecutive images form one source); a
    missing path, an empty folder or a glob that matches nothing is a user error."""
    sources: list[Source] = []

    def add_image(path: str) -> None:
        if sources and sources[-1].kind == "images" and sources[-1].name == "images":
            sources[-1].paths.append(path)
            sources[-1].count = len(sources[-1].paths)
        else:
            sources.append(Source("images", "images", [path], 1))

    def add_file(path: str) -> None:
        if Path(path).suffix.lower() in VIDEO_EXTS:
            sources.append(_open_video(path))
        else:
            add_image(path)

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            if _is_lmdb(p):
                sources.append(_open_lmdb(spec))
                continue
            files = sorted(
                str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
            )
            if not files:
                raise FcosUserError(
                    f"folder {spec!r} holds no image files ({', '.join(sorted(IMAGE_EXTS))})",
                    hint="pass a folder of images, image files, a glob, an LMDB or a video",
                )
            for f in files:
                add_image(f)
        elif p.exists():
            add_file(spec)
        elif _has_magic(spec):
            matches = sorted(
                m
                for m in glob.glob(spec, recursive=True)
                if os.path.isfile(m) and Path(m).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS
            )
            if not matches:
                raise FcosUserError(
                    f"pattern {spec!r} matches no image or video file",
                    hint="check the pattern (quote it so the shell does not expand it first)",
                )
            for m in matches:
                add_file(m)
        else:
            raise FcosUserError(
                f"image source {spec!r} does not exist",
                hint="check the path: pass image files, folders, globs, an "
                "LMDB folder or a video file",
            )
    return sources


# --- LMDB -------------------------------------------------------------------------------------


def _coco_dataset(path: str) -> Any:
    try:
        from fcos_plugin_coco.dataset import Coco
    except ImportError:
        raise FcosUserError(
            f"{path} is an LMDB; reading it needs fcos-plugin-coco",
            hint="pip install -e plugins/coco",
        ) from None
    return Coco(path)


def _open_lmdb(path: str) -> Source:
    return Source("lmdb", path, count=len(_coco_dataset(path)))


def _lmdb_frames(path: str) -> Iterator[Frame]:
    from fcos_plugin_coco.decode import DecodeError

    ds = _coco_dataset(path)
    for i, image_id in enumerate(ds.img_ids):
        name = f"{path}#{image_id}"
        try:
            rec, rgb = ds.read_record(i)
        except DecodeError as exc:
            yield Frame(name, error=f"{name}: cannot decode the image ({exc})", image_id=image_id)
            continue
        yield Frame(getattr(rec, "file_name", None) or name, rgb, image_id=image_id)


# --- video ------------------------------------------------------------------------------------


def load_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise FcosUserError(
            "reading or writing a video needs OpenCV", hint="pip install opencv-python-headless"
        ) from None
    return cv2


def _open_video(path: str) -> Source:
    cv2 = load_cv2()
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise FcosUserError(
                f"{path}: OpenCV cannot open the video",
                hint="pass a video OpenCV decodes (mp4, avi, mkv, ...)",
            )
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
    finally:
        cap.release()
    return Source("video", path, count=count, fps=fps)


def _video_frames(source: Source) -> Iterator[Frame]:
    cv2 = load_cv2()
    cap = cv2.VideoCapture(source.name)
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            name = f"{source.name}#{i:06d}"
            if h * w > MAX_PIXELS:
                yield Frame(name, error=f"{name}: {w}x{h} pixels is over the limit")
            else:
                yield Frame(name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()
