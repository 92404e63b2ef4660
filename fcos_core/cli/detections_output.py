"""How the commands that detect on image files (`fcos predict`, a backend's `fcos infer`) show
their results: one record per image ``{"image", "detections": [{"label", "score", "box",
"name"?}], "vis"?}``, printed as JSON or as a short listing, and drawn on the image.

``--save-vis DIR`` files are named ``<stem>_det.png``, ``<stem>_det-2.png``, ... (a video:
``<stem>_det.mp4``): each is created exclusively, so two images with the same stem
(``a/x.jpg``, ``b/x.jpg``) get two files and a file already in ``DIR`` is never overwritten.
Drawings stay readable at any size: images under 512 pixels are enlarged by a whole factor
before drawing, lines and the font follow the drawn size, and each label is ``name score`` on a
tag filled with its class colour."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

#: the most ``-N`` suffixes tried for one image before giving up
_MAX_SUFFIX = 10_000

#: box colours by label; labels past the list get colours spread around the hue circle
COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
    (0, 128, 128),
]
#: drawings of images smaller than this (longer side, pixels) are scaled up by a whole factor
#: so that labels stay readable: a 128x128 image is drawn at 512x512
MIN_DRAW_SIDE = 512


def colour(label: int) -> tuple[int, int, int]:
    """One colour per class: the fixed list, then hues spaced by the golden angle."""
    if 0 <= label < len(COLOURS):
        return COLOURS[label]
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _caption(d: dict[str, Any]) -> str:
    return str(d.get("name", d["label"]))


def draw_scale(height: int, width: int) -> int:
    """The whole factor an image of this size is enlarged by before drawing (1 when its longer
    side reaches :data:`MIN_DRAW_SIDE`)."""
    return max(1, -(-MIN_DRAW_SIDE // max(1, max(height, width))))


def _render(rgb: Any, dets: list[dict[str, Any]]) -> Any:
    """The image (enlarged by :func:`draw_scale`) with each box and a ``name score`` label on
    a filled tag in the class colour; line width and font size follow the drawn size."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    k = draw_scale(h, w)
    img = Image.fromarray(rgb)
    if k > 1:
        # nearest: the pixels stay as they were
        img = img.resize((w * k, h * k), Image.Resampling.NEAREST)
    side = min(img.size)
    line = max(2, round(side / 250))
    font_px = max(12, round(side / 32))
    try:
        font: Any = ImageFont.load_default(size=font_px)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    for d in dets:
        c = colour(int(d["label"]))
        x1, y1, x2, y2 = (v * k for v in d["box"])
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=c, width=line)
        text = f"{_caption(d)} {d['score']:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0 + 2 * line, ty1 - ty0 + 2 * line
        # the tag sits above the box, or inside its top when there is no room above
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(max(0, x1), max(0, img.size[0] - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=c)
        ink = (0, 0, 0) if 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150 else (255, 255, 255)
        draw.text((tx + line - tx0, ty + line - ty0), text, fill=ink, font=font)
    return img


def draw_detections(rgb: Any, dets: list[dict[str, Any]], path: Path) -> None:
    """Draw each detection's box and ``name score`` on ``rgb`` (HxWx3 uint8) into ``path``."""
    img = _render(rgb, dets)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def prepare_vis_folder(folder: str | os.PathLike[str]) -> Path:
    """Create the ``--save-vis`` folder (before any work is done); a clear error when it
    cannot be."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FcosUserError(
            f"--save-vis {path} is a file, not a folder", hint="pass a folder for the drawn images"
        ) from None
    except OSError as exc:
        raise FcosUserError(
            f"--save-vis {path}: cannot create the folder ({exc.strerror or exc})",
            hint="pass a folder you can write to",
        ) from None
    return path


def claim_path(folder: str | os.PathLike[str], stem: str, suffix: str) -> tuple[Path, Any]:
    """Create and open (``xb``) a new file ``<stem><suffix>`` in ``folder``, else
    ``<stem>-N<suffix>`` for the first N whose name is free; returns (path, open file). Never
    opens an existing file."""
    folder = prepare_vis_folder(folder)
    for n in range(1, _MAX_SUFFIX + 1):
        path = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            return path, open(path, "xb")
        except FileExistsError:
            continue
    raise FcosUserError(
        f"{folder}: {stem}{suffix} and {_MAX_SUFFIX - 1} numbered variants all exist",
        hint="pass an empty output folder",
    )


def save_vis(
    rgb: Any, dets: list[dict[str, Any]], folder: str | os.PathLike[str], image_path: str
) -> Path:
    """Draw the detections of ``image_path`` into a new file in ``folder`` and return its
    path: ``<stem>_det.png``, or ``<stem>_det-N.png`` for the first N whose name is free.
    Never overwrites a file (each name is opened with ``O_EXCL``)."""
    img = _render(rgb, dets)
    stem = Path(image_path.split("#", 1)[0]).stem + (
        f"_{image_path.rsplit('#', 1)[1]}" if "#" in image_path else ""
    )
    path, fh = claim_path(folder, f"{stem}_det", ".png")
    try:
        with fh:
            img.save(fh, format="PNG")
    except BaseException:
        path.unlink(missing_ok=True)  # ours: created just above
        raise
    return path


class VideoVis:
    """An annotated copy of a video: ``<stem>_det.mp4`` (``-N`` when taken) in ``folder``,
    each frame drawn as :func:`save_vis` draws an image, at the source's frame rate."""

    def __init__(self, folder: str | os.PathLike[str], video_path: str, fps: float | None) -> None:
        self.path, fh = claim_path(folder, f"{Path(video_path).stem}_det", ".mp4")
        fh.close()  # claimed; OpenCV writes it by name
        self.fps = fps or 25.0
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, rgb: Any, dets: list[dict[str, Any]]) -> None:
        import numpy as np

        from fcos_core.cli.image_source import load_cv2

        cv2 = load_cv2()
        img = _render(rgb, dets)
        if self._writer is None:
            self._size = img.size
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size
            )
            if not self._writer.isOpened():
                self.path.unlink(missing_ok=True)  # ours
                raise FcosUserError(
                    f"{self.path}: OpenCV cannot write an mp4 video here",
                    hint="install an OpenCV build with video support (opencv-python-headless)",
                )
        if img.size != self._size:  # a stream whose frame size changes: keep the first
            img = img.resize(self._size)
        self._writer.write(cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR))

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.release()
        return self.path


def print_detections(
    results: list[dict[str, Any]], as_json: bool, max_per_image: int | None = None
) -> None:
    """Print the records as JSON, or one line per image and per detection (at most
    ``max_per_image`` of them)."""
    if as_json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(
            f"{r['image']}: {len(r['detections'])} detection(s)"
            + (f" -> {r['vis']}" if "vis" in r else "")
        )
        for d in r["detections"][:max_per_image]:
            print(f"    {_caption(d):<12} {d['score']:.3f}  {d['box']}")
