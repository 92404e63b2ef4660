"""How the commands that detect on image files (`fcos predict`, a backend's `fcos infer`) show
their results: one record per image ``{"image", "detections": [{"label", "score", "box",
"name"?}], "vis"?}``, printed as JSON or as a short listing, and drawn on the image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: box colours by label (a label beyond the list wraps around)
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


def _caption(d: dict[str, Any]) -> str:
    return str(d.get("name", d["label"]))


def draw_detections(rgb: Any, dets: list[dict[str, Any]], path: Path) -> None:
    """Draw each detection's box and ``name score`` on ``rgb`` (HxWx3 uint8) into ``path``."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    for d in dets:
        colour = COLOURS[d["label"] % len(COLOURS)]
        draw.rectangle(d["box"], outline=colour, width=2)
        draw.text((d["box"][0] + 2, d["box"][1] + 1), f"{_caption(d)} {d['score']:.2f}",
                  fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


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
