"""How the commands that detect on image files (`fcos predict`, a backend's `fcos infer`) show
their results: one record per image ``{"image", "detections": [{"label", "score", "box",
"name"?}], "vis"?}``, printed as JSON or as a short listing, and drawn on the image.

``--save-vis DIR`` files are named ``<stem>_det.png``, ``<stem>_det-2.png``, ... : each is
created exclusively, so two images with the same stem (``a/x.jpg``, ``b/x.jpg``) get two files
and a file already in ``DIR`` is never overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

#: the most ``-N`` suffixes tried for one image before giving up
_MAX_SUFFIX = 10_000

#: box colours by label (a label beyond the list wraps around)
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


def _caption(d: dict[str, Any]) -> str:
    return str(d.get("name", d["label"]))


def _render(rgb: Any, dets: list[dict[str, Any]]) -> Any:
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    for d in dets:
        colour = COLOURS[d["label"] % len(COLOURS)]
        draw.rectangle(d["box"], outline=colour, width=2)
        draw.text((d["box"][0] + 2, d["box"][1] + 1), f"{_caption(d)} {d['score']:.2f}",
                  fill=colour)
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
        raise FcosUserError(f"--save-vis {path} is a file, not a folder",
                            hint="pass a folder for the drawn images") from None
    except OSError as exc:
        raise FcosUserError(f"--save-vis {path}: cannot create the folder "
                            f"({exc.strerror or exc})",
                            hint="pass a folder you can write to") from None
    return path


def save_vis(rgb: Any, dets: list[dict[str, Any]], folder: str | os.PathLike[str],
             image_path: str) -> Path:
    """Draw the detections of ``image_path`` into a new file in ``folder`` and return its
    path: ``<stem>_det.png``, or ``<stem>_det-N.png`` for the first N whose name is free.
    Never overwrites a file (each name is opened with ``O_EXCL``)."""
    img = _render(rgb, dets)
    folder = prepare_vis_folder(folder)
    stem = Path(image_path).stem
    for n in range(1, _MAX_SUFFIX + 1):
        path = folder / (f"{stem}_det.png" if n == 1 else f"{stem}_det-{n}.png")
        try:
            fh = open(path, "xb")
        except FileExistsError:
            continue
        try:
            with fh:
                img.save(fh, format="PNG")
        except BaseException:
            path.unlink(missing_ok=True)  # ours: created just above
            raise
        return path
    raise FcosUserError(f"--save-vis {folder}: {stem}_det.png and {_MAX_SUFFIX - 1} numbered "
                        "variants all exist", hint="pass an empty --save-vis folder")


def print_detections(results: list[dict[str, Any]], as_json: bool,
                     max_per_image: int | None = None) -> None:
    """Print the records as JSON, or one line per image and per detection (at most
    ``max_per_image`` of them)."""
    if as_json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} detection(s)"
              + (f" -> {r['vis']}" if "vis" in r else ""))
        for d in r["detections"][:max_per_image]:
            print(f"    {_caption(d):<12} {d['score']:.3f}  {d['box']}")
