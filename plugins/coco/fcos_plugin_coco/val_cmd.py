"""``fcos val CONFIG --stage S``: score one stage's model (or the compiled artifact) on the
config's validation data or on other COCO data, and write a report folder.

Which model, data and metric: :mod:`fcos_core.engine.stage_eval` -- the stage's
``<stage>_predictor`` exactly as ``fcos run`` scores it (a stage without one: its trainer's
model with the stage checkpoint; ``compile``: the artifact run by the backend's runtime), so the
numbers equal ``summary.json``'s. ``--data DIR`` evaluates other data with the same transforms:
an LMDB from ``fcos pack-coco`` (ground truth from the LMDB, or ``--ann``) or an image folder
with ``--ann JSON``.

The run folder (``--out``, default ``runs/<task_name>/val-<stage>``, ``-2``, ``-3`` ... when taken;
an existing ``--out`` must be empty: nothing is ever replaced) gets ``val.json`` (every number
below), ``coco_summary.txt``, ``per_class.csv``, ``pr_curves.png``, ``confusion_matrix.png`` /
``.csv``, ``worst/NN_img<id>.png``, ``detections.json`` (every detection scored, in COCO's
results format, unless ``--no-detections``) and ``log.jsonl``. The figures and their matching
rules are described in :mod:`fcos_plugin_coco.eval_report`.

Importing this module is cheap (argparse only): ``fcos --help`` builds the parser from
:func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

GENERATOR = "fcos val"
STAGES = ("float", "calibration", "qat", "int_infer", "compile")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (its <stage>_predictor blocks, as `fcos run`)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. ckpt_dir=./tmp_models/run2",
    )
    p.add_argument(
        "--stage",
        default="float",
        metavar="STAGE",
        help=f"the stage whose model is scored: {' | '.join(STAGES)} (default: "
        "float); compile runs the compiled artifact with its backend's runtime",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="weights to score instead of the configured ones: replaces the last "
        "LoadCheckpoint of the stage's predictor (int_infer: the QAT weights "
        "it converts); for a stage without a predictor its "
        "<stage>-checkpoint-best.pth.tar; for compile the artifact file",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="evaluate this data instead of the config's validation set, with the "
        "same transforms: an LMDB from `fcos pack-coco`, or an image folder "
        "(then --ann is required)",
    )
    p.add_argument(
        "--ann",
        default=None,
        metavar="JSON",
        help="COCO instances json of --data (for an LMDB: default its own ground truth)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder for the report (default: runs/<task_name>/val-<stage>, "
        "numbered when taken); must be new or empty",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="confusion matrix and worst images: detections scoring at least this "
        "(the COCO numbers use every detection)",
    )
    p.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        help="confusion matrix and worst images: IoU that matches a detection to a "
        "ground-truth box",
    )
    p.add_argument(
        "--worst",
        type=int,
        default=10,
        metavar="N",
        help="draw the N images with the most false positives + missed boxes",
    )
    p.add_argument(
        "--no-detections",
        action="store_true",
        help="do not write detections.json (every detection, COCO results format)",
    )
    p.add_argument("--json", action="store_true", help="print val.json instead of the tables")


# --- options and the run folder ----------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    for name, value in (
        ("--score-threshold", args.score_threshold),
        ("--iou-threshold", args.iou_threshold),
    ):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise FcosUserError(
                f"{name} must be a number in [0, 1], got {value}", hint=f"e.g. {name} 0.5"
            )
    if args.iou_threshold == 0.0:
        raise FcosUserError(
            "--iou-threshold must be > 0 (0 would match boxes that do not overlap)",
            hint="e.g. --iou-threshold 0.5",
        )
    if args.worst < 0:
        raise FcosUserError(f"--worst must be >= 0, got {args.worst}", hint="e.g. --worst 10")
    if args.ann is not None and args.data is None:
        raise FcosUserError(
            "--ann names the ground truth of --data, which is missing",
            hint="pass --data DIR (the images or LMDB) together with --ann",
        )
    if args.data is not None:
        if not os.path.isdir(args.data):
            raise FcosUserError(
                f"--data {args.data} is not a folder",
                hint="pass an LMDB folder (fcos pack-coco) or an image folder",
            )
        if not _is_lmdb(args.data) and args.ann is None:
            raise FcosUserError(
                f"--data {args.data} is an image folder, which needs its annotations",
                hint="add --ann instances.json (or pack the folder with `fcos pack-coco`)",
            )
        if args.ann is not None and not os.path.isfile(args.ann):
            raise FcosUserError(
                f"--ann {args.ann} does not exist", hint="pass the COCO instances json of --data"
            )


def _is_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def make_run_folder(out: str | None, task_name: str, stage: str) -> Path:
    """A new (or empty) folder for the report; never one holding files already."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FcosUserError(
                f"--out {out} is a file, not a folder", hint="pass a new or empty folder"
            )
        if path.is_dir() and any(path.iterdir()):
            raise FcosUserError(
                f"--out {out} is not empty; fcos val never replaces files",
                hint="pass a new or empty folder (or leave --out out: "
                "runs/<task_name>/val-<stage> is numbered when taken)",
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FcosUserError(
                f"--out {out}: cannot create the folder ({exc.strerror or exc})",
                hint="pass a writable folder",
            ) from None
        return path
    base = Path("runs") / task_name
    for n in range(1, 10_000):
        path = base / (f"val-{stage}" if n == 1 else f"val-{stage}-{n}")
        try:
            base.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # exclusive: two runs never share a folder
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise FcosUserError(
                f"cannot create {path} ({exc.strerror or exc})",
                hint="pass --out with a writable folder",
            ) from None
    raise FcosUserError(
        f"{base}/val-{stage}-N: every name is taken", hint="pass --out with a new folder"
    )


# --- other data ----------------------------------------------------------------------------------


def gt_from_lmdb(path: str) -> dict[str, Any]:
    """A COCO instances dict of the ground truth packed in an LMDB (the boxes the dataset
    gives: cleaned and clipped by the packer; crowd regions kept as crowd)."""
    from fcos_plugin_coco.data_stats import read_lmdb_records

    meta, _, recs = read_lmdb_records(path)
    images, anns = [], []
    for rec in recs:
        images.append(
            {
                "id": int(rec["id"]),
                "width": int(rec["width"]),
                "height": int(rec["height"]),
                "file_name": str(rec["file_name"]),
            }
        )
        for (x1, y1, x2, y2), cat, crowd in zip(rec["boxes"], rec["category_ids"], rec["iscrowd"]):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(rec["id"]),
                    "category_id": int(cat),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(crowd)),
                }
            )
    return {"images": images, "annotations": anns, "categories": list(meta["categories"])}


class _DataSwap:
    """Builders of the data loader and metric blocks for ``--data`` / ``--ann``; an LMDB
    without ``--ann`` is scored against its own ground truth, put in ``scratch`` (the metric
    reads it once, when it is built)."""

    def __init__(self, data: str, ann: str | None, scratch: Path) -> None:
        self.data = data
        self.ann = ann
        if ann is None:
            gt_path = scratch / "ground_truth.json"
            gt_path.write_text(json.dumps(gt_from_lmdb(data)), encoding="utf-8")
            self.ann = str(gt_path)

    def loader(self, node: Any) -> Any:
        import attrs

        from fcos_core.build import build
        from fcos_plugin_coco.dataset import Coco, CocoFolder

        dataset = node.kwargs.get("dataset") if hasattr(node, "kwargs") else None
        if dataset is None or not hasattr(dataset, "kwargs"):
            raise FcosUserError(
                "--data replaces the dataset of the evaluation's data loader, "
                "which has no dataset block",
                hint="evaluate without --data",
            )
        transforms = build(dataset.kwargs.get("transforms")) or []
        if _is_lmdb(self.data):
            ds: Any = Coco(self.data, transforms=transforms)
        else:
            ds = CocoFolder(self.data, str(self.ann), transforms=transforms)
        # the loader block as configured (batch size, collate, workers), on the new dataset
        return build(attrs.evolve(node, kwargs={**node.kwargs, "dataset": ds}))

    def metric(self, node: Any) -> Any:
        import attrs

        from fcos_core.build import build

        if "ann_file" not in getattr(node, "kwargs", {}):
            raise FcosUserError(
                f"--data: the metric {getattr(node.entry, 'name', node)!r} "
                "takes no ann_file, so it cannot score other data",
                hint="use COCODetectionMetric, or evaluate without --data",
            )
        return build(
            attrs.evolve(
                node, kwargs={**node.kwargs, "ann_file": str(self.ann), "demo_if_missing": False}
            )
        )


def _image_reader(loaders: list[Any]) -> Any:
    """img_id -> original RGB pixels, from the datasets' ``read_record`` (None if none has
    the image)."""
    where: dict[int, tuple[Any, int]] = {}
    for loader in loaders:
        ds = getattr(loader, "dataset", None)
        ids = getattr(ds, "img_ids", None)
        if ds is None or ids is None or not hasattr(ds, "read_record"):
            continue
        for idx, img_id in enumerate(ids):
            where.setdefault(int(img_id), (ds, idx))

    def read(img_id: int) -> Any:
        hit = where.get(int(img_id))
        return None if hit is None else hit[0].read_record(hit[1])[1]

    return read


# --- the report -------------------------------------------------------------------------------


def _coco_metric(metrics: list[Any]) -> Any:
    from fcos_plugin_coco.metric import COCODetectionMetric

    for m in metrics:
        if isinstance(m, COCODetectionMetric):
            return m
    return None


def write_report(
    folder: Path,
    metric: Any,
    results: dict[str, float],
    head: dict[str, Any],
    read_image: Any,
    score_threshold: float,
    iou_threshold: float,
    worst_n: int,
    save_detections: bool = True,
) -> dict[str, Any]:
    """Write every file of the report for an evaluated ``metric``; returns val.json's dict."""
    from fcos_plugin_coco import eval_report as er

    names = metric.category_names()
    per_class = metric.per_class()
    matches = er.match_all(metric.gt, metric.detections(), iou_threshold, score_threshold)
    cm = er.confusion_matrix(matches, metric.cat_ids)
    labels = [names[c] for c in metric.cat_ids]
    worst = er.worst_images(matches, worst_n)
    summary = metric.evaluation.summary if metric.evaluation is not None else ""
    text = (summary or "no detections: every number is 0") + "\n"
    er.write_file(folder / "coco_summary.txt", lambda f: f.write(text.encode("utf-8")))
    er.write_per_class_csv(folder / "per_class.csv", per_class)
    er.plot_pr_curves(folder / "pr_curves.png", metric.evaluation, names, GENERATOR)
    er.write_confusion_csv(folder / "confusion_matrix.csv", cm, labels)
    er.plot_confusion(
        folder / "confusion_matrix.png", cm, labels, GENERATOR, iou_threshold, score_threshold
    )
    drawn = er.write_worst_images(folder / "worst", worst, names, read_image)
    if save_detections:  # COCO's results format: re-score with any COCO tool
        results_json = json.dumps(er.coco_results(metric.detections())).encode("utf-8")
        er.write_file(folder / "detections.json", lambda f: f.write(results_json))
    return {
        **head,
        "metrics": results,
        "per_class": per_class,
        "confusion_matrix": {
            "labels": [*labels, er.BACKGROUND],
            "rows": "ground truth",
            "columns": "predicted",
            "iou_threshold": iou_threshold,
            "score_threshold": score_threshold,
            "counts": cm.tolist(),
        },
        "worst_images": drawn,
        "images": len(matches),
    }


def val_command(args: argparse.Namespace, host: Any) -> int:
    import tempfile

    from fcos_core.config import load_config
    from fcos_core.engine import stage_eval
    from fcos_core.engine.runtime import apply_runtime_settings, seed_everything
    from fcos_core.logging_setup import configure_logging, get_logger

    start = time.perf_counter()
    stage = stage_eval.parse_stage(args.stage)
    _check_args(args)
    cfg = load_config(args.config, host, args.overrides)
    data = cfg.data
    configure_logging(None)
    ctx = stage_eval.stage_context(cfg, stage, None, get_logger(f"fcos.val.{stage}"))
    # everything is built and every checkpoint checked before the run folder is made
    with tempfile.TemporaryDirectory(prefix="fcos-val-") as scratch:
        swap = _DataSwap(args.data, args.ann, Path(scratch)) if args.data is not None else None
        kwargs = {"make_loader": swap.loader, "make_metric": swap.metric} if swap else {}
        ev = stage_eval.prepare(cfg, stage, ctx, args.checkpoint, **kwargs)
    ev.check_files()
    folder = make_run_folder(args.out, str(data.get("task_name", "fcos")), stage)
    configure_logging(folder, 0, True)
    ctx.logger = log = get_logger(f"fcos.val.{stage}")
    ctx.run_dir = folder
    apply_runtime_settings(data)
    if data.get("seed") is not None:  # as the pipeline seeds each stage
        seed_everything(int(data["seed"]))
    log.info(
        "val",
        config=cfg.file,
        stage=stage,
        model=ev.source,
        weights=ev.weights,
        data=args.data or "the config's",
        run_dir=str(folder),
    )
    results = ev.run(ctx)
    head = {
        "generator": GENERATOR,
        "config": os.path.abspath(cfg.file),
        "stage": stage,
        "model": ev.source,
        "weights": ev.weights,
        "data": os.path.abspath(args.data) if args.data else "config",
        "ann_file": None,
    }
    metric = _coco_metric(ev.metrics)
    from fcos_plugin_coco.eval_report import write_file

    if metric is not None:
        head["ann_file"] = (
            os.path.abspath(metric.ann_file)
            if args.ann or not args.data
            else "ground_truth.json (from the LMDB)"
        )
        if args.data and not args.ann:
            gt = json.dumps(metric.gt).encode("utf-8")
            write_file(folder / "ground_truth.json", lambda f: f.write(gt))
        report = write_report(
            folder,
            metric,
            results,
            head,
            _image_reader(ev.loaders),
            args.score_threshold,
            args.iou_threshold,
            args.worst,
            not args.no_detections,
        )
    else:
        log.warning(
            "no COCODetectionMetric among the stage's metrics: only its numbers are "
            "written (no per-class table, curves or confusion matrix)"
        )
        report = {**head, "metrics": results}
    report["seconds"] = round(time.perf_counter() - start, 3)
    text = json.dumps(report, indent=2) + "\n"
    write_file(folder / "val.json", lambda f: f.write(text.encode("utf-8")))
    log.info(
        "val done",
        stage=stage,
        seconds=report["seconds"],
        **{k: round(v, 4) for k, v in results.items() if k in ("mAP", "AP50")},
    )
    if args.json:
        print(text, end="")
    else:
        _print_report(report, metric, stage, ev, folder)
    sys.stdout.flush()
    return 0


def _print_report(report: dict[str, Any], metric: Any, stage: str, ev: Any, folder: Path) -> None:
    from fcos_plugin_coco.eval_report import format_per_class

    results = report["metrics"]
    if metric is not None and metric.evaluation is not None and metric.evaluation.summary:
        print(metric.evaluation.summary)
    else:
        print("  ".join(f"{k} {v:.4f}" for k, v in results.items()))
    if metric is not None:
        print()
        print(format_per_class(report["per_class"]))
    print(
        f"\nstage {stage}: mAP {results.get('mAP', float('nan')):.4f} ({ev.source}; "
        f"weights {ev.weights})"
    )
    print(f"report: {folder} ({report['seconds']:.1f} s)")
