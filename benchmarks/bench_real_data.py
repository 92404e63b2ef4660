"""Accuracy on real data: fcos against torchvision's FCOS, same wall-clock budget, same data.

Contenders, each trained from scratch (no pretrained weights anywhere) in its own subprocess
with the same threads and environment, for the same wall-clock budget (``--minutes``), then
scored on the same validation split with the same pycocotools evaluation
(``COCODetectionMetric(backend="pycocotools")``):

* ``fcos`` -- the shipped own-data recipe, ``configs/fcos_b0_custom.yaml`` (``--config``),
  run exactly as docs/own-data.md says: ``fcos pack-coco`` for both splits, then
  ``fcos run CONFIG --stage float`` with ``vars.data_root``, ``vars.val_ann_file``,
  ``vars.num_classes`` and ``vars.input_size`` set. Its cosine schedule needs a length in
  epochs, so a short probe run (not counted) measures seconds per epoch and the real run gets
  as many epochs as fit the budget; the ``TimeLimit`` callback, added to a copy of the config,
  ends it before the budget is crossed if later epochs run slower than the probe's. The
  budget is training-loop time for every contender (the peers' clock also starts after their
  model and images are loaded), and no contender validates while it trains. Scored: the last
  checkpoint (EMA weights), never the best-on-validation one, which would select on the test
  split.
* ``tv_r50`` -- ``torchvision.models.detection.fcos_resnet50_fpn(weights=None,
  weights_backbone=None)`` (GroupNorm head, BatchNorm backbone trained from scratch).
* ``tv_mbv3`` -- torchvision's ``FCOS`` on ``mobilenet_backbone("mobilenet_v3_large",
  fpn=True, weights=None, returned_layers=[2, 3, 5])`` with BatchNorm (FPN strides 8, 16, 32
  and a max-pooled 64, not the default's 32, 32, 64), anchors sized to its feature strides.

The torchvision peers train with SGD (lr 0.01, momentum 0.9, weight decay 1e-4), batch 4,
random horizontal flips, a linear warm-up from 0.1% over the first ``--peer-warmup-steps``
steps (default 100) and a cosine decay over the rest *of the time budget*, at the same input
size as fcos (their internal resize is set to ``--input-size``), and keep detections above
score 0.05 (as fcos does) instead of torchvision's 0.2 default, which would cost them AP.

Why a warm-up counted in steps: torchvision's box head ends in a ReLU, and an early step at
the full learning rate can push every box output below zero for good -- the GIoU loss then
sits at exactly 1.0 and the peer scores 0 whatever else it learns. With a warm-up of 3% of a
6-minute budget (about 13 ResNet-50 steps here) that happened to both peers; an earlier
version of this benchmark reported those zeros as the peers' accuracy. The peers' last losses
are part of the result, and a box loss stuck at 1.0 marks the peer ``collapsed`` in the
report, so a diverged peer is never mistaken for a weak one.

The data is any COCO folder (``--data DIR``: ``DIR/train.json``, ``DIR/val.json``,
``DIR/images/{train,val}/``); without it the nuclei set of ``tools/make_nuclei_coco.py`` is built
(it fetches the ``stardist`` wheel with pip, the only network use).

Usage::

    python benchmarks/bench_real_data.py [--data DIR] [--minutes 12] [--threads 2]
        [--contenders fcos,tv_r50,tv_mbv3] [--input-size 256] [--seed 0] [--quick] [--out F]

Prints AP, AP50, images seen and training seconds per contender and fcos's ratio to the better
peer; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no busy-waiting threads

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("tv_r50", "tv_mbv3")
CONTENDERS = ("fcos", *PEERS)
PEER_WARMUP_STEPS = 100
PEER_LR = 0.01
LOSS_WINDOW = 20  # steps averaged into a peer's final losses
COLLAPSED_GIOU = 0.995  # a mean GIoU loss this close to 1.0: no box overlaps its target


# -- data --------------------------------------------------------------------------------------


def data_layout(data: Path) -> dict[str, Path]:
    paths = {
        "train_json": data / "train.json",
        "val_json": data / "val.json",
        "train_images": data / "images" / "train",
        "val_images": data / "images" / "val",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        sys.exit(
            f"error: --data {data} is not a COCO folder of the expected layout; missing: "
            f"{', '.join(missing)} (train.json, val.json, images/train/, images/val/)"
        )
    return paths


def ensure_nuclei(cache: Path) -> Path:
    out = cache / "nuclei"
    if not (out / "val.json").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_nuclei_coco.py"), "--out", str(out)]
            + (["--force"] if out.exists() else []),
            check=True,
        )
    return out


def load_split(ann: Path, images: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Images (file, id, boxes xyxy, contiguous labels) and the sorted category ids."""
    coco = json.loads(ann.read_text())
    cat_ids = sorted(int(c["id"]) for c in coco["categories"])
    index = {c: i for i, c in enumerate(cat_ids)}
    per_image: dict[int, list[tuple[list[float], int]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        if a.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        per_image.setdefault(int(a["image_id"]), []).append(
            ([x, y, x + w, y + h], index[int(a["category_id"])])
        )
    records = []
    for im in coco["images"]:
        anns = per_image.get(int(im["id"]), [])
        records.append(
            {
                "file": str(images / im["file_name"]),
                "id": int(im["id"]),
                "boxes": [b for b, _ in anns],
                "labels": [lab for _, lab in anns],
            }
        )
    return records, cat_ids


# -- torchvision peers (run in a worker subprocess) --------------------------------------------


def build_peer(name: str, num_classes: int, size: int) -> Any:
    import torch
    from torchvision.models.detection import FCOS, fcos_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    common = {"min_size": size, "max_size": size, "score_thresh": 0.05, "detections_per_img": 100}
    # torchvision's FCOS reserves label 0 for the background: classes are 1..K
    if name == "tv_r50":
        return fcos_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1, **common
        )
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        fpn=True,
        weights=None,
        norm_layer=torch.nn.BatchNorm2d,
        trainable_layers=6,
        # strides 8, 16, 32 (+ max-pool 64), like the ResNet-50 peer's P3-P5 and fcos's finest
        # level: torchvision's default (the last two stages) gives strides 32, 32, 64, where a
        # 12-pixel object rarely holds a grid point and the peer learns no box at all
        returned_layers=[2, 3, 5],
    )
    with torch.no_grad():
        feats = backbone.eval()(torch.zeros(1, 3, size, size))
    strides = tuple((size // int(f.shape[-1]),) for f in feats.values())
    anchors = AnchorGenerator(sizes=strides, aspect_ratios=((1.0,),) * len(strides))
    return FCOS(backbone.train(), num_classes=num_classes + 1, anchor_generator=anchors, **common)


def read_rgb(path: str) -> Any:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)  # grayscale files come back as 3 channels
    if img is None:
        raise SystemExit(f"error: cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def train_peer(
    name: str,
    paths: dict[str, Path],
    minutes: float,
    size: int,
    seed: int,
    batch: int = 4,
    warmup_steps: int = PEER_WARMUP_STEPS,
    lr: float = PEER_LR,
) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records, cat_ids = load_split(paths["train_json"], paths["train_images"])
    images = [
        torch.from_numpy(read_rgb(r["file"])).permute(2, 0, 1).float() / 255.0 for r in records
    ]
    model = build_peer(name, len(cat_ids), size).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    budget = minutes * 60.0
    seen, steps, skipped = 0, 0, 0
    recent: deque[dict[str, float]] = deque(maxlen=LOSS_WINDOW)  # the last steps' loss terms
    t0 = time.perf_counter()
    t_warm = None  # when the warm-up ended; the cosine runs over the rest of the budget
    done = False
    while not done:
        order = rng.permutation(len(records))
        for i in range(0, len(order), batch):
            now = time.perf_counter() - t0
            if now >= budget:
                done = True
                break
            if steps < warmup_steps:
                factor = 0.001 + 0.999 * steps / warmup_steps
            else:
                t_warm = now if t_warm is None else t_warm
                frac = (now - t_warm) / max(budget - t_warm, 1e-9)
                factor = 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for g in opt.param_groups:
                g["lr"] = lr * factor
            imgs, targets = [], []
            for j in order[i : i + batch]:
                img = images[j]
                boxes = torch.tensor(records[j]["boxes"], dtype=torch.float32).reshape(-1, 4)
                labels = torch.tensor(records[j]["labels"], dtype=torch.int64) + 1
                if rng.random() < 0.5:
                    w = img.shape[-1]
                    img = img.flip(-1)
                    boxes = torch.stack(
                        [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1
                    )
                imgs.append(img)
                targets.append({"boxes": boxes, "labels": labels})
            losses = model(imgs, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            loss.backward()
            opt.step()
            recent.append({k: float(v) for k, v in losses.items()})
            seen += len(imgs)
            steps += 1
    train_s = time.perf_counter() - t0
    model.eval()
    val, _ = load_split(paths["val_json"], paths["val_images"])
    metric = make_metric(paths["val_json"])
    with torch.no_grad():
        for r in val:
            rgb = read_rgb(r["file"])
            out = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0])[0]
            keep = out["labels"] > 0  # channel 0 is the unused background class
            metric.update(
                _meta(r["id"], rgb.shape[:2]),
                [
                    {
                        "boxes": out["boxes"][keep],
                        "scores": out["scores"][keep],
                        "labels": out["labels"][keep] - 1,
                    }
                ],
            )
    res = metric.compute()
    final = (
        {k: round(sum(r[k] for r in recent) / len(recent), 4) for k in recent[0]} if recent else {}
    )
    return {
        "AP": res["mAP"],
        "AP50": res["AP50"],
        "images_seen": seen,
        "steps": steps,
        "skipped_steps": skipped,
        "train_s": round(train_s, 1),
        "warmup_steps": warmup_steps,
        "final_losses": final,
        "collapsed": collapsed(final),
    }


def collapsed(final_losses: dict[str, float]) -> bool:
    """True when the box regression is dead: torchvision's GIoU term at 1.0 (every box output
    clamped to zero by the head's ReLU), averaged over the last steps."""
    return final_losses.get("bbox_regression", 0.0) >= COLLAPSED_GIOU


def make_metric(val_json: Path) -> Any:
    from fcos_plugin_coco.metric import COCODetectionMetric

    return COCODetectionMetric(str(val_json), backend="pycocotools")


def _meta(img_id: int, hw: tuple[int, int]) -> dict[str, Any]:
    import numpy as np

    return {"img_id": [img_id], "scale_factor": np.ones((1, 2)), "ori_shape": [tuple(hw)]}


# -- fcos (the CLI, as a user runs it) ---------------------------------------------------------

EPOCH_LINE = re.compile(r"^(\S+Z) .*loss_\S+ epoch .*epoch=(\d+)")


def _fcos(args: list[str], env: dict[str, str], log: Path) -> float:
    cmd = [sys.executable, "-m", "fcos_core", *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(True)[-20:])
        raise SystemExit(f"error: {' '.join(cmd)} exited {rc}; end of {log}:\n{tail}")
    return time.perf_counter() - t0


def _epoch_times(log: Path) -> list[float]:
    from datetime import datetime

    out = []
    for line in log.read_text().splitlines():
        m = EPOCH_LINE.match(line)
        if m:
            out.append(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp())
    return out


def run_fcos(
    paths: dict[str, Path],
    minutes: float,
    size: int,
    seed: int,
    config: Path,
    work: Path,
    env: dict[str, str],
    extra: list[str],
) -> dict[str, Any]:
    import numpy as np  # noqa: F401  (the worker imports the stack once, as the peers do)

    _, cat_ids = load_split(paths["train_json"], paths["train_images"])
    data_root = work / "data"
    for split in ("train", "val"):
        _fcos(
            [
                "pack-coco",
                "--images",
                str(paths[f"{split}_images"]),
                "--ann",
                str(paths[f"{split}_json"]),
                "--out",
                str(data_root / f"{split}_lmdb"),
            ],
            env,
            work / f"pack_{split}.log",
        )
    common = [
        f"vars.data_root={data_root}",
        f"vars.val_ann_file={paths['val_json']}",
        f"vars.num_classes={len(cat_ids)}",
        f"vars.num_classes_with_background={len(cat_ids) + 1}",
        f"vars.input_size={size}",
        f"seed={seed}",
        *extra,
    ]

    def run(tag: str, epochs: int, cfg_path: Path) -> tuple[float, Path]:
        log = work / f"fcos_{tag}.log"
        # no validation inside the loop (the peers validate once, after training, too): the
        # last checkpoint is scored below, so per-epoch validation would only spend budget
        secs = _fcos(
            [
                "run",
                str(cfg_path),
                "--stage",
                "float",
                "--run-dir",
                str(work / tag),
                f"ckpt_dir={work / tag / 'ckpt'}",
                f"task_name=bench_{tag}",
                f"float_trainer.num_epochs={epochs}",
                f"vars.val_callback.val_interval={epochs + 1}",
                *common,
            ],
            env,
            log,
        )
        return secs, log

    probe_epochs = 6
    _, probe_log = run("probe", probe_epochs, config)
    stamps = _epoch_times(probe_log)
    if len(stamps) < probe_epochs:
        raise SystemExit(f"error: could not read epoch times from {probe_log}")
    per_epoch = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    # the budget is training-loop time, as for the peers (whose clock starts after their model
    # and images are loaded): the cosine schedule is sized to it from the probe, and TimeLimit
    # ends the run before it is crossed when later epochs turn out slower than the probe's
    epochs = max(1, int(minutes * 60.0 / per_epoch))
    train_s, log = run("main", epochs, with_time_limit(config, minutes, work))
    loop_min = json.loads((work / "main" / "summary.json").read_text())["float"]["time_limit"][
        "elapsed_minutes"
    ]
    per_epoch_images = _images_per_epoch(
        work / "main", len(load_split(paths["train_json"], paths["train_images"])[0])
    )
    ckpt = work / "main" / "ckpt" / "float-checkpoint-last.pth.tar"
    res = score_fcos(config, common, ckpt, paths["val_json"])
    done = _epochs_done(log)
    return {
        "AP": res["mAP"],
        "AP50": res["AP50"],
        "epochs": done,
        "epochs_planned": epochs,
        "images_seen": done * per_epoch_images,
        "train_s": round(loop_min * 60.0, 1),
        "process_s": round(train_s, 1),
        "probe_s_per_epoch": round(per_epoch, 2),
    }


def with_time_limit(config: Path, minutes: float, work: Path) -> Path:
    """A copy of ``config`` whose float trainer also has ``TimeLimit(max_minutes=minutes)``."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    trainer = cfg.get("float_trainer") or {}
    callbacks = list(trainer.get("callbacks") or [])
    callbacks.append({"type": "TimeLimit", "max_minutes": float(minutes)})
    trainer["callbacks"] = callbacks
    cfg["float_trainer"] = trainer
    out = work / f"{config.stem}.time_limit.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _epochs_done(log: Path) -> int:
    return len(_epoch_times(log))


def _images_per_epoch(run_dir: Path, num_images: int) -> int:
    """Images one epoch of the resolved float data loader feeds (drop_last drops a tail)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    loader = cfg["float_trainer"]["data_loader"]
    batch = int(loader["batch_size"])
    return num_images // batch * batch if loader.get("drop_last") else num_images


def score_fcos(config: Path, overrides: list[str], ckpt: Path, val_json: Path) -> dict[str, float]:
    """fcos's last checkpoint through its own validation loader and post-process, scored by
    the same metric object type and backend as the peers."""
    import torch

    from fcos_core.build import build
    from fcos_core.cli.model_io import build_model
    from fcos_core.config import load_config
    from fcos_core.plugins import load_host

    cfg = load_config(config, load_host(), overrides)
    model = build_model(cfg, "model", str(ckpt), None, log=lambda m: None)
    loader = build(cfg.values["val_data_loader"])
    metric = make_metric(val_json)
    with torch.no_grad():
        for batch in loader:
            metric.update(batch, model(batch))
    return metric.compute()


# -- driver ------------------------------------------------------------------------------------


def worker(ns: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(ns.threads)
    paths = {k: Path(v) for k, v in json.loads(ns.paths).items()}
    if ns.worker in PEERS:
        res = train_peer(
            ns.worker,
            paths,
            ns.minutes,
            ns.input_size,
            ns.seed,
            warmup_steps=ns.peer_warmup_steps,
            lr=ns.peer_lr,
        )
    else:
        env = dict(os.environ)
        res = run_fcos(
            paths,
            ns.minutes,
            ns.input_size,
            ns.seed,
            Path(ns.config),
            Path(ns.work),
            env,
            ns.fcos_override or [],
        )
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="COCO folder (train.json, val.json, images/)")
    ap.add_argument("--minutes", type=float, default=12.0, help="training budget per contender")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "configs" / "fcos_b0_custom.yaml"))
    ap.add_argument(
        "--fcos-override",
        action="append",
        help="extra key=value override for the fcos run (repeatable)",
    )
    ap.add_argument(
        "--peer-warmup-steps",
        type=int,
        default=PEER_WARMUP_STEPS,
        help="linear warm-up of the torchvision peers, in steps (see the module docstring)",
    )
    ap.add_argument("--peer-lr", type=float, default=PEER_LR, help="the torchvision peers' SGD lr")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 minutes each")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        worker(ns)
        return
    if ns.quick:
        ns.minutes = 0.3
    names = [c.strip() for c in ns.contenders.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        sys.exit(f"error: unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    with tempfile.TemporaryDirectory(prefix="fcos-bench-real-") as tmp:
        data = ns.data if ns.data else ensure_nuclei(Path(tmp))
        paths = data_layout(data)
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--paths",
                json.dumps({k: str(v) for k, v in paths.items()}),
                "--work",
                str(work),
                "--minutes",
                str(ns.minutes),
                "--threads",
                str(ns.threads),
                "--input-size",
                str(ns.input_size),
                "--seed",
                str(ns.seed),
                "--config",
                ns.config,
                "--peer-warmup-steps",
                str(ns.peer_warmup_steps),
                "--peer-lr",
                str(ns.peer_lr),
            ]
            for o in ns.fcos_override or []:
                cmd += ["--fcos-override", o]
            env = dict(os.environ, OMP_NUM_THREADS=str(ns.threads))
            print(f"[{name}] training for {ns.minutes:g} min ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(
                    f"error: contender {name} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                )
            results[name] = json.loads(line[-1][len("RESULT ") :])
            print(f"[{name}] {results[name]}", flush=True)
    report(results, ns, data)


def report(results: dict[str, dict[str, Any]], ns: argparse.Namespace, data: Path) -> None:
    peers = [p for p in PEERS if p in results]
    best = {k: max((results[p][k] for p in peers), default=None) for k in ("AP", "AP50")}
    print(
        f"\nreal-data accuracy, {ns.minutes:g} min per contender, {ns.threads} threads, "
        f"input {ns.input_size}, seed {ns.seed}, data {data if ns.data else 'nuclei'}"
    )
    print(f"{'contender':<10} {'AP':>6} {'AP50':>6} {'images seen':>12} {'train s':>8}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['AP']:>6.3f} {r['AP50']:>6.3f} {r.get('images_seen')!s:>12} "
            f"{r['train_s']:>8}"
        )
    for p in peers:
        if results[p].get("collapsed"):
            print(
                f"warning: {p}'s box regression collapsed (mean GIoU loss of its last "
                f"{LOSS_WINDOW} steps: {results[p]['final_losses'].get('bbox_regression')}; its "
                "box outputs are all clamped to zero by the head's ReLU): its AP is a training "
                "failure, not its accuracy -- rerun with a longer --peer-warmup-steps"
            )
    if "fcos" in results and peers:
        for k in ("AP", "AP50"):
            shown = f"{results['fcos'][k] / best[k]:.2f}x" if best[k] else "n/a (peers at 0)"
            print(f"fcos / better peer, {k}: {shown}")
    if ns.out:
        ns.out.write_text(
            json.dumps(
                {
                    "minutes": ns.minutes,
                    "threads": ns.threads,
                    "input_size": ns.input_size,
                    "seed": ns.seed,
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
