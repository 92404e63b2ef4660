"""``fcos predict``: run a config's model -- any stage's -- on images, folders, globs, an LMDB
or a video; print, write (``predictions.json``) and draw the detections.

Pictures go through the config's validation transforms (``val_data_loader.dataset.transforms``)
exactly as in evaluation, ``--batch-size`` at a time, and boxes are mapped back to the original
pixels. The sources, batching, progress bar, outputs and drawing are the front end shared with
``fcos infer`` (:mod:`fcos_core.cli.detect_frontend`); pictures are read by the one loader of
:mod:`fcos_core.cli.image_source` (EXIF orientation, a pixel limit), and one that cannot be read
is reported and skipped.

``--stage``: ``float`` (default; the ``model`` block with ``--checkpoint`` or
``<ckpt_dir>/float-checkpoint-best.pth.tar``), ``calibration``, ``qat``, ``int_infer`` (the
model ``fcos run`` scores for that stage: its predictor's, or the stage trainer's model with
the stage checkpoint; ``--checkpoint`` replaces the weights, as in ``fcos val``) or
``compile`` (the compiled artifact, run by the compile backend's runtime; ``--checkpoint``:
another artifact file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fcos_core.cli.image_source import MAX_PIXELS  # noqa: F401  (the loader's pixel limit)
from fcos_core.errors import FcosUserError

PREDICT_STAGES = ("float", "calibration", "qat", "int_infer", "compile")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fcos_core.cli.detect_frontend import add_source_arguments

    p.add_argument("config", help="YAML config (its models and validation transforms)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    add_source_arguments(p)
    p.add_argument(
        "--stage",
        default="float",
        choices=PREDICT_STAGES,
        help="whose model: float (default), calibration, qat, int_infer (the model "
        "fcos run scores for that stage) or compile (the compiled artifact)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights (float default: <ckpt_dir>/float-checkpoint-best.pth.tar, "
        "which must exist unless --allow-untrained; other stages: the file "
        "their predictor loads; compile: the artifact)",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="float: run random weights when no checkpoint exists (to test the pipeline)",
    )


def _val_transforms(cfg: Any) -> list[Any]:
    from fcos_core.build import build

    loader = cfg.node("val_data_loader")
    dataset = loader.kwargs.get("dataset") if loader is not None else None
    if dataset is None or "transforms" not in dataset.kwargs:
        raise FcosUserError(
            "fcos predict takes its preprocessing from val_data_loader.dataset."
            "transforms, which this config lacks",
            hint="add a val_data_loader block (see configs/fcos_b0.yaml)",
        )
    return [build(t) for t in dataset.kwargs["transforms"]]


def _categories(cfg: Any) -> list[dict[str, Any]] | None:
    """``[{"id", "name"}]`` sorted by id (label ``i`` = the ``i``-th), from the validation
    annotation file (``vars.val_ann_file``) when there is one."""
    path = (cfg.data.get("vars") or {}).get("val_ann_file")
    if isinstance(path, str) and Path(path).is_file() and Path(path).stat().st_size < 2**30:
        cats = json.loads(Path(path).read_text(encoding="utf-8")).get("categories", [])
        return [
            {"id": int(c["id"]), "name": str(c.get("name", c["id"]))}
            for c in sorted(cats, key=lambda c: int(c["id"]))
        ]
    return None


def _class_names(cfg: Any) -> list[str] | None:
    cats = _categories(cfg)
    return [c["name"] for c in cats] if cats is not None else None


class _NotUsed:
    """Stands for the evaluation data and metrics, which predict does not use."""


_NOT_USED = _NotUsed()


def _stage_model(cfg: Any, args: argparse.Namespace, say: Any) -> tuple[Any, Any]:
    """(``forward(batch) -> detections per image``, device) of ``args.stage``'s model."""
    if args.stage == "float":
        from fcos_core.cli.model_io import build_model

        model = build_model(
            cfg,
            "model",
            args.checkpoint,
            "float-checkpoint-best.pth.tar",
            log=say,
            allow_untrained=args.allow_untrained,
        )
        return model, "cpu"
    if args.allow_untrained:
        raise FcosUserError(
            f"--allow-untrained applies to --stage float only; stage "
            f"{args.stage} needs its checkpoint",
            hint="train the stage first, or pass --checkpoint PATH",
        )
    import sys

    from fcos_core.engine import stage_eval
    from fcos_core.logging_setup import configure_logging, get_logger

    # the converters log what they do: to stderr, so stdout stays the results (--json)
    configure_logging(None, level="warning" if args.json else "info", stream=sys.stderr)
    ctx = stage_eval.stage_context(cfg, args.stage, None, get_logger("fcos.predict"))
    # no data loaders or metrics: predict feeds its own pictures
    ev = stage_eval.prepare(
        cfg,
        args.stage,
        ctx,
        args.checkpoint,
        make_loader=lambda node: _NOT_USED,
        make_metric=lambda node: _NOT_USED,
    )
    ev.check_files()
    say(f"weights: {ev.weights} ({ev.source})")
    if ev.predictor is None:  # compile: the artifact, run by the backend's runtime
        backend, program = ev.backend, ev.program
        return (lambda batch: backend.detect(program, batch["img"])), "cpu"
    ev.predictor.prepare_model(ctx)
    return ev.predictor.model.eval(), ev.predictor.device


def predict_command(args: argparse.Namespace, host: Any) -> int:
    import numpy as np
    import torch

    from fcos_core.cli.detect_frontend import check_arguments, map_back, run_frontend
    from fcos_core.config import load_config

    check_arguments(args)
    cfg = load_config(args.config, host, args.overrides)
    say = (lambda m: None) if args.json else print
    transforms = _val_transforms(cfg)
    model, device = _stage_model(cfg, args, say)

    def detect(rgbs: list[Any]) -> list[list[dict[str, Any]]]:
        samples = []
        for rgb in rgbs:
            h, w = rgb.shape[:2]
            sample: dict[str, Any] = {
                "img": rgb,
                "gt_bboxes": np.zeros((0, 4), np.float32),
                "gt_classes": np.zeros((0,), np.int64),
                "img_id": 0,
                "ori_shape": (h, w),
                "img_shape": (h, w),
                "pad_shape": (h, w),
                "scale_factor": np.ones(2, np.float32),
            }
            for t in transforms:
                sample = t(sample)
            if not isinstance(sample["img"], torch.Tensor):
                raise FcosUserError(
                    "the validation transforms must end with ToTensor (and Normalize)",
                    hint="see val_transforms in configs/fcos_b0.yaml",
                )
            samples.append(sample)
        out: list[list[dict[str, Any]]] = [[] for _ in rgbs]
        # one forward per picture size (the transforms usually pad every picture alike)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s["img"].shape), []).append(i)
        for idx in groups.values():
            batch = {
                "img": torch.stack([samples[i]["img"] for i in idx]).to(device),
                "img_shape": [samples[i]["img_shape"] for i in idx],
            }
            with torch.no_grad():
                dets = model(batch)
            for i, det in zip(idx, dets):
                out[i] = map_back(det, samples[i], rgbs[i].shape[:2], args.score_threshold)
        return out

    return run_frontend(args, detect, categories=_categories(cfg))
