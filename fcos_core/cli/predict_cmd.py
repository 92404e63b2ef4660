"""``fcos predict``: run the float model of a config on image files; print and draw detections.

Images go through the config's validation transforms (``val_data_loader.dataset.transforms``)
exactly as in evaluation, and boxes are mapped back to the original image pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

#: refuse images above this many pixels (decompression bombs)
MAX_PIXELS = 100_000_000
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (its `model` block and validation transforms)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--images", nargs="+", required=True, help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", default=None,
                   help="weights (default: <ckpt_dir>/float-checkpoint-best.pth.tar; one of "
                        "them must exist unless --allow-untrained)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="run random weights when no checkpoint exists (to test the pipeline)")
    p.add_argument("--save-vis", default=None, metavar="DIR",
                   help="write each image with its detections drawn into DIR as "
                        "<stem>_det.png (<stem>_det-2.png, ... when taken: never overwrites)")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="print and draw detections scoring at least this")
    p.add_argument("--json", action="store_true", help="print the detections as JSON")


def _load_image(path: str) -> Any:
    import numpy as np
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except FileNotFoundError:
        raise FcosUserError(f"image {path!r} does not exist", hint="check the path") from None
    except Exception as exc:
        raise FcosUserError(f"{path}: cannot read the image ({exc})",
                            hint="pass JPEG or PNG files") from None


def _val_transforms(cfg: Any) -> list[Any]:
    from fcos_core.build import build

    loader = cfg.node("val_data_loader")
    dataset = loader.kwargs.get("dataset") if loader is not None else None
    if dataset is None or "transforms" not in dataset.kwargs:
        raise FcosUserError("fcos predict takes its preprocessing from val_data_loader.dataset."
                            "transforms, which this config lacks",
                            hint="add a val_data_loader block (see configs/fcos_b0.yaml)")
    return [build(t) for t in dataset.kwargs["transforms"]]


def _class_names(cfg: Any) -> list[str] | None:
    """Category names in label order, read from the validation json when there is one."""
    for key in ("val_ann_file",):
        path = (cfg.data.get("vars") or {}).get(key)
        if isinstance(path, str) and Path(path).is_file() and Path(path).stat().st_size < 2**30:
            cats = json.loads(Path(path).read_text(encoding="utf-8")).get("categories", [])
            return [c.get("name", str(c.get("id"))) for c in sorted(cats, key=lambda c: c["id"])]
    return None




def predict_command(args: argparse.Namespace, host: Any) -> int:
    import numpy as np
    import torch

    from fcos_core.cli.detections_output import prepare_vis_folder, print_detections, save_vis
    from fcos_core.cli.model_io import build_model
    from fcos_core.config import load_config

    cfg = load_config(args.config, host, args.overrides)
    model = build_model(cfg, "model", args.checkpoint, "float-checkpoint-best.pth.tar",
                        log=lambda m: None if args.json else print(m),
                        allow_untrained=args.allow_untrained)
    if args.save_vis:
        prepare_vis_folder(args.save_vis)
    transforms = _val_transforms(cfg)
    names = _class_names(cfg)
    results = []
    for path in args.images:
        rgb = _load_image(path)
        h, w = rgb.shape[:2]
        sample: dict[str, Any] = {
            "img": rgb, "gt_bboxes": np.zeros((0, 4), np.float32),
            "gt_classes": np.zeros((0,), np.int64), "img_id": 0, "ori_shape": (h, w),
            "img_shape": (h, w), "pad_shape": (h, w), "scale_factor": np.ones(2, np.float32)}
        for t in transforms:
            sample = t(sample)
        img = sample["img"]
        if not isinstance(img, torch.Tensor):
            raise FcosUserError("the validation transforms must end with ToTensor (and "
                                "Normalize)", hint="see val_transforms in configs/fcos_b0.yaml")
        with torch.no_grad():
            det = model({"img": img[None], "img_shape": [sample["img_shape"]]})[0]
        sx, sy = (float(v) for v in np.asarray(sample["scale_factor"]).reshape(-1)[:2])
        ox, oy = (float(v) for v in np.asarray(sample.get("crop_offset", (0, 0))).reshape(-1)[:2])
        dets = []
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                     det["labels"].tolist()):
            if score < args.score_threshold:
                continue
            x1, y1, x2, y2 = ((box[0] + ox) / sx, (box[1] + oy) / sy,
                              (box[2] + ox) / sx, (box[3] + oy) / sy)
            clip = [round(min(max(x1, 0.0), w), 1), round(min(max(y1, 0.0), h), 1),
                    round(min(max(x2, 0.0), w), 1), round(min(max(y2, 0.0), h), 1)]
            name = names[label] if names and label < len(names) else str(label)
            dets.append({"label": int(label), "name": name, "score": round(float(score), 4),
                         "box": clip})
        entry: dict[str, Any] = {"image": path, "detections": dets}
        if args.save_vis:
            entry["vis"] = str(save_vis(rgb, dets, args.save_vis, path))
        results.append(entry)
    print_detections(results, args.json)
    return 0
