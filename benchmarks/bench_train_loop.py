"""Training throughput of fcos's training loop against a bare PyTorch loop and effdet.

Three measurements, each in a fresh subprocess (so each gets its own peak memory):

* ``fcos``   -- the framework's ``Trainer`` (DataLoader, MultiBatchProcessor, StatsMonitor,
  MetricUpdater + LossShow, CosLrUpdater) over the model;
* ``bare``   -- a hand-written PyTorch loop (torch DataLoader, zero_grad/forward/backward/step)
  over the same model, the same data and the same optimizer;
* ``effdet`` -- effdet's EfficientDet-D0 training step (``DetBenchTrain``) on the same images.

The model is the seed's FCOS-EfficientNetB0 when fcos_core.models and the efficientnet/bifpn
plugins are importable, else a small stand-in detector (said in the output). Defaults: 512x512
images, batch 4, 2 threads. Overhead target: fcos within 5% of bare; speed target: fcos >= 1.5x
effdet. ``--quick`` is a smoke run (128x128, a few steps).

Usage::

    python benchmarks/bench_train_loop.py [--quick] [--steps N] [--warmup N] [--size S]
                                          [--repeats N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no busy-waiting threads

import argparse
import copy
import itertools
import json
import resource
import subprocess
import sys
import time
from typing import Any

SEED_MODEL = {
    "type": "FCOS",
    "backbone": {
        "type": "efficientnet",
        "bn_kwargs": {},
        "model_type": "b0",
        "num_classes": 1000,
        "include_top": False,
        "activation": "relu",
        "use_se_block": False,
    },
    "neck": {
        "type": "BiFPN",
        "in_strides": [2, 4, 8, 16, 32],
        "out_strides": [8, 16, 32, 64, 128],
        "stride2channels": {2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
        "out_channels": 64,
        "num_outs": 5,
        "stack": 3,
        "start_level": 2,
        "end_level": -1,
        "fpn_name": "bifpn_sum",
    },
    "head": {
        "type": "FCOSHead",
        "num_classes": 80,
        "in_strides": [8, 16, 32, 64, 128],
        "out_strides": [8, 16, 32, 64, 128],
        "stride2channels": {8: 64, 16: 64, 32: 64, 64: 64, 128: 64},
        "upscale_bbox_pred": False,
        "feat_channels": 64,
        "stacked_convs": 4,
        "int8_output": False,
        "int16_output": True,
        "dequant_output": True,
    },
    "targets": {
        "type": "DynamicFcosTarget",
        "strides": [8, 16, 32, 64, 128],
        "cls_out_channels": 80,
        "background_label": 80,
        "topK": 10,
        "loss_cls": {
            "type": "FocalLoss",
            "loss_name": "cls",
            "num_classes": 81,
            "alpha": 0.25,
            "gamma": 2.0,
            "loss_weight": 1.0,
            "reduction": "none",
        },
        "loss_reg": {
            "type": "GIoULoss",
            "loss_name": "reg",
            "loss_weight": 2.0,
            "reduction": "none",
        },
    },
    "post_process": {
        "type": "FCOSMultiStrideFilter",
        "strides": [8, 16, 32, 64, 128],
        "threshold": -2.944,
        "for_compile": False,
        "score_threshold": 0.05,
        "iou_threshold": 0.6,
        "max_shape": [512, 512],
    },
    "loss_cls": {
        "type": "FocalLoss",
        "loss_name": "cls",
        "num_classes": 81,
        "alpha": 0.25,
        "gamma": 2.0,
        "loss_weight": 1.0,
    },
    "loss_centerness": {"type": "CrossEntropyLoss", "loss_name": "centerness", "use_sigmoid": True},
    "loss_reg": {"type": "GIoULoss", "loss_name": "reg", "loss_weight": 1.0},
}


# --- model and data ---------------------------------------------------------------------------


def _standin_model() -> Any:
    import torch
    from torch import nn

    class StandIn(nn.Module):
        """A few strided convs with a dict-of-losses training interface."""

        def __init__(self) -> None:
            super().__init__()
            chans = [3, 16, 24, 40, 80, 112]
            layers = []
            for cin, cout in itertools.pairwise(chans):
                layers += [
                    nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ]
            self.body = nn.Sequential(*layers)
            self.cls = nn.Conv2d(112, 80, 1)
            self.reg = nn.Conv2d(112, 4, 1)

        def forward(self, batch: Any) -> Any:
            x = self.body(batch["img"])
            return {"cls": self.cls(x).sigmoid().mean(), "reg": self.reg(x).abs().mean()}

    torch.manual_seed(0)
    return StandIn()


def build_model(size: int) -> tuple[Any, str, Any]:
    """(model, description, collate function)."""
    import torch

    try:
        from fcos_core.build import build
        from fcos_core.config.loader import LineMap
        from fcos_core.config.validate import Validator
        from fcos_core.plugins import load_host

        host = load_host()
        cfg = copy.deepcopy(SEED_MODEL)
        cfg["post_process"]["max_shape"] = [size, size]
        v = Validator(host.registries, LineMap(None))
        node = v.check_component("models", cfg, ("model",))
        if v.problems:
            raise RuntimeError("; ".join(p.render() for p in v.problems))
        torch.manual_seed(0)
        model = build(node)
        collate = host.registries["collates"].lookup("collate_2d").load()
        return model, "seed FCOS-EfficientNetB0 (fcos_core.models + plugins)", collate
    except Exception as exc:  # noqa: BLE001 - no seed model: time the loop on a stand-in
        print(
            f"note: seed model unavailable ({type(exc).__name__}: {str(exc)[:160]}); "
            "using a stand-in",
            file=sys.stderr,
        )
        return _standin_model(), "stand-in conv detector", _collate


def _collate(items: list[dict]) -> dict:
    """Stack images; keep per-image boxes and classes as lists (like collate_2d)."""
    import torch

    out = {k: [it[k] for it in items] for k in items[0]}
    out["img"] = torch.stack(out["img"])
    return out


class SyntheticDetection:
    """Fixed random images with 1-3 boxes each, as dict items of the data contract."""

    def __init__(self, n: int, size: int) -> None:
        import numpy as np
        import torch

        g = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        self.items = []
        for i in range(n):
            k = int(rng.integers(1, 4))
            xy = rng.uniform(0, size * 0.6, (k, 2))
            wh = rng.uniform(size * 0.1, size * 0.4, (k, 2))
            boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], 1).astype(np.float32)
            self.items.append(
                {
                    "img": torch.randn(3, size, size, generator=g),
                    "gt_bboxes": torch.from_numpy(boxes),
                    "gt_classes": torch.from_numpy(rng.integers(0, 80, k).astype(np.int64)),
                    "img_id": i,
                    "ori_shape": (size, size),
                    "img_shape": (size, size),
                    "pad_shape": (size, size),
                    "scale_factor": torch.tensor([1.0, 1.0]),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


# --- the three measurements -------------------------------------------------------------------


def _peak_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed(step_iter: Any, warmup: int, steps: int, batch: int) -> float:
    """images/s over ``steps`` steps after ``warmup`` steps; ``step_iter`` yields per step."""
    it = iter(step_iter)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t0)


def run_bare(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    model, desc, collate = build_model(args.size)
    ds = SyntheticDetection(args.batch * (args.warmup + args.steps), args.size)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, collate_fn=collate)
    # the same measured lever the fcos engine applies (RunConfig.channels_last): a fair baseline
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    model.train()

    def steps():
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            losses = model(batch)
            sum(losses.values()).backward()
            opt.step()
            yield

    ips = _timed(steps(), args.warmup, args.steps, args.batch)
    return {"images_per_s": ips, "peak_mib": _peak_mib(), "model": desc}


def run_fcos(args: argparse.Namespace) -> dict:
    from fcos_core.engine.callbacks.base import Callback
    from fcos_core.engine.callbacks.lr_updaters import CosLrUpdater
    from fcos_core.engine.callbacks.metric_updater import MetricUpdater
    from fcos_core.engine.callbacks.stats_monitor import StatsMonitor
    from fcos_core.engine.context import RunContext
    from fcos_core.engine.data_loader import DataLoader
    from fcos_core.engine.functions import update_loss
    from fcos_core.engine.loss_show import LossShow
    from fcos_core.engine.optimizers import SGD
    from fcos_core.engine.trainer import Trainer
    from fcos_core.logging_setup import configure_logging

    configure_logging(None, level="warning")
    model, desc, collate = build_model(args.size)
    ds = SyntheticDetection(args.batch * (args.warmup + args.steps), args.size)
    marks: list[float] = []

    class Clock(Callback):
        def on_step_end(self, loop: Any, batch: Any, outputs: Any) -> None:
            marks.append(time.perf_counter())

    trainer = Trainer(
        model=model,
        num_epochs=1,
        data_loader=DataLoader(ds, batch_size=args.batch, shuffle=True, collate_fn=collate),
        optimizer=lambda model: SGD(model, lr=1e-4, momentum=0.9, nesterov=True),
        device="cpu" if not args.cuda else "cuda",
        callbacks=[
            StatsMonitor(log_freq=10),
            MetricUpdater(update_loss, step_log_freq=0),
            CosLrUpdater(warmup_len=0),
            Clock(),
        ],
        train_metrics=LossShow(),
    )
    trainer.run(RunContext(stage="bench", run_dir=None, seed=0))
    span = marks[-1] - marks[args.warmup - 1] if args.warmup else marks[-1] - marks[0]
    n = args.steps if args.warmup else args.steps - 1
    return {"images_per_s": n * args.batch / span, "peak_mib": _peak_mib(), "model": desc}


def run_effdet(args: argparse.Namespace) -> dict:
    import torch
    from effdet import create_model

    torch.manual_seed(0)
    bench = create_model(
        "efficientdet_d0",
        bench_task="train",
        num_classes=80,
        pretrained=False,
        pretrained_backbone=False,
        bench_labeler=True,
        image_size=(args.size, args.size),
    )
    bench = bench.to(memory_format=torch.channels_last)  # effdet gets the same lever
    bench.train()
    ds = SyntheticDetection(args.batch * 2, args.size)
    opt = torch.optim.SGD(bench.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

    def batch_at(i: int) -> tuple[Any, dict]:
        items = [ds[(i * args.batch + j) % len(ds)] for j in range(args.batch)]
        img = torch.stack([it["img"] for it in items])
        n = max(len(it["gt_bboxes"]) for it in items)
        bbox = torch.full((args.batch, n, 4), -1.0)
        cls = torch.full((args.batch, n), -1.0)
        for j, it in enumerate(items):
            b = it["gt_bboxes"]
            bbox[j, : len(b)] = b[:, [1, 0, 3, 2]]  # effdet wants yxyx
            cls[j, : len(b)] = it["gt_classes"].float() + 1
        return img, {"bbox": bbox, "cls": cls}

    def steps():
        i = 0
        while True:
            img, target = batch_at(i)
            opt.zero_grad(set_to_none=True)
            bench(img, target)["loss"].backward()
            opt.step()
            i += 1
            yield

    ips = _timed(steps(), args.warmup, args.steps, args.batch)
    return {"images_per_s": ips, "peak_mib": _peak_mib(), "model": "effdet EfficientDet-D0"}


# --- driver -----------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    fn = {"bare": run_bare, "fcos": run_fcos, "effdet": run_effdet}[args.mode]
    print("RESULT " + json.dumps(fn(args)), flush=True)


def _run_child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--mode",
        mode,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "FCOS_PROGRESS": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} run failed:\n{out.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 128x128, few steps")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternate bare/fcos this many times and keep the best of each (one "
        "pair of runs moves by +-8%% with the machine; --quick: 1)",
    )
    p.add_argument("--mode", choices=["bare", "fcos", "effdet"], help=argparse.SUPPRESS)
    p.add_argument("--cuda", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.warmup, args.repeats = 128, 3, 1, 1
    if args.mode:
        _child(args)
        return 0
    results: dict[str, list[dict]] = {"bare": [], "fcos": [], "effdet": []}
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
        for mode in ("bare", "fcos"):
            results[mode].append(_run_child(mode, args))
    results["effdet"].append(_run_child("effdet", args))
    best = {m: max(rs, key=lambda r: r["images_per_s"]) for m, rs in results.items()}
    print(
        f"# {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
        f"{args.steps} timed steps after {args.warmup}; model: {best['fcos']['model']}"
    )
    for mode, label in (
        ("bare", "bare PyTorch loop"),
        ("fcos", "fcos Trainer"),
        ("effdet", "effdet EfficientDet-D0"),
    ):
        r = best[mode]
        print(f"{label:24s} {r['images_per_s']:8.2f} img/s   peak {r['peak_mib']:8.0f} MiB")
    overhead = best["bare"]["images_per_s"] / best["fcos"]["images_per_s"] - 1
    speedup = best["fcos"]["images_per_s"] / best["effdet"]["images_per_s"]
    print(
        f"loop overhead vs bare: {overhead * 100:+.1f}% (target < 5%)   "
        f"fcos vs effdet: {speedup:.2f}x (target >= 1.5x)"
    )
    print("SUMMARY " + json.dumps({"overhead": overhead, "speedup_vs_effdet": speedup, **best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
