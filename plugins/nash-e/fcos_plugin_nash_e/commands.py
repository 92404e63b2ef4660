"""Bodies of ``fcos compile`` and ``fcos infer`` (imported only when the command runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from fcos_core.errors import FcosUserError


def compile_command(args: argparse.Namespace, host: Any) -> int:
    """Load the config and run the engine's compile stage on it (compile, then the deploy
    table: agreement with the integer model, latency, mAP; ``--allow-disagreement`` sets
    ``compile_cfg.allow_disagreement``)."""
    from fcos_core.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "allow_disagreement", False):  # the core option, for every backend
        overrides.append("compile_cfg.allow_disagreement=true")
    cfg = load_config(args.config, host, overrides)
    if cfg.data.get("compile_cfg") is None:
        raise FcosUserError(
            f"{args.config}: the config has no compile_cfg block",
            hint="add compile_cfg (march, hbm, out_dir, opt, ...)",
        )
    from fcos_core.engine.pipeline import run_pipeline

    code = run_pipeline(cfg, host, ["compile"], run_dir=args.run_dir)
    hbm = (cfg.compile_options or {}).get("hbm")
    if code == 0 and hbm:
        print(f"compiled: {hbm}")
    return code


# --- infer ----------------------------------------------------------------------------------


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio to fit ``size`` (h, w), pad bottom/right with 0."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size[0], size[1], 3), np.uint8)
    out[:nh, :nw] = resized
    return out, scale


def decode_outputs(
    runtime: Any,
    outputs: tuple[np.ndarray, ...],
    det: dict[str, Any],
    image_size: tuple[int, int],
    score_threshold: float | None,
) -> dict[str, Any]:
    import torch

    from fcos_core.models.post_process import FCOSMultiStrideFilter

    prog = runtime.program
    floats = []
    for name, value in zip(prog.outputs, outputs):
        info = prog.tensors[name]
        if value.dtype.kind in "iu":  # integer codes: dequantize with the tensor's scale
            value = value.astype(np.float64) * info.scale
        floats.append(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    post = FCOSMultiStrideFilter(
        det["strides"],
        threshold=det["threshold"],
        score_threshold=det["score_threshold"] if score_threshold is None else score_threshold,
        iou_threshold=det["iou_threshold"],
        nms_pre=det["nms_pre"],
        max_per_img=det["max_per_img"],
        max_shape=det["max_shape"],
    )
    return post.detect(floats, image_size, bbox_upscaled=det["bbox_upscaled"])[0]


def infer_command(args: argparse.Namespace, host: Any) -> int:
    """Run a compiled artifact on pictures -- files, folders, globs, an LMDB or a video, the
    front end ``fcos predict`` uses (:mod:`fcos_core.cli.detect_frontend`) -- and print,
    write (``--out``: predictions.json) and draw (``--save-vis``) the detections."""
    from fcos_core.cli.detect_frontend import check_arguments, run_frontend
    from fcos_core.yuv import rgb_to_yuv444_uint8
    from fcos_plugin_nash_e.artifact import read_artifact
    from fcos_plugin_nash_e.runtime import Runtime

    check_arguments(args)
    program, _ = read_artifact(args.artifact)
    det = program.meta.get("detection")
    if not det:
        raise FcosUserError(
            f"{args.artifact}: the compiled model has no detection post-process "
            "information (compiled from a bare body?)",
            hint="compile the deploy model with its FCOSMultiStrideFilter "
            "post_process (for_compile: true)",
        )
    runtime = Runtime(program, validate=False)
    h, w = program.meta["input_size"]
    color = program.meta.get("preprocess", {}).get("color", "yuv")
    inp = program.inputs[0]

    def detect_one(rgb: np.ndarray) -> list[dict[str, Any]]:
        boxed, scale = letterbox(rgb, (h, w))
        pixels = (
            rgb_to_yuv444_uint8(boxed)
            if (color == "yuv" or inp.source == "pyramid")
            else np.ascontiguousarray(boxed.transpose(2, 0, 1))
        )
        if inp.source == "pyramid":
            feed: Any = pixels
        else:
            feed = ((pixels.astype(np.float32) - 128.0) / 128.0)[None]
        outputs = runtime.run({inp.name: feed})
        d = decode_outputs(runtime, outputs, det, (h, w), args.score_threshold)
        oh, ow = float(rgb.shape[0]), float(rgb.shape[1])
        dets = []
        for box, score, label in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()
        ):
            x1, y1, x2, y2 = (v / scale for v in box)
            dets.append(
                {
                    "label": int(label),
                    "score": round(float(score), 4),
                    "box": [
                        round(min(max(x1, 0), ow), 1),
                        round(min(max(y1, 0), oh), 1),
                        round(min(max(x2, 0), ow), 1),
                        round(min(max(y2, 0), oh), 1),
                    ],
                }
            )
        return dets

    # the CPU runtime takes one picture per run: a batch is run picture by picture
    code = run_frontend(args, lambda rgbs: [detect_one(rgb) for rgb in rgbs])
    sys.stdout.flush()
    return code
