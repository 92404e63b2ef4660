"""One prepared GPU check: does fcos's CUDA path work, agree with CPU, and how fast is it?

Runs in one process and prints one table (and ``--json PATH`` writes the rows):

(a) agreement -- the demo config's float stage (model, optimizer, batch processor) for a few
    steps on the device and on CPU, from the same initial weights and the same batches; each
    step's total loss agrees within ``LOSS_RTOL`` (TF32 off for this comparison, so both sides
    compute in float32). The C++ CPU kernels must not be loaded by the CUDA steps.
(b) throughput at 512x512 (``--size``), train and eval, for fp32 (contiguous and channels-last),
    bf16 autocast, fp16 autocast + GradScaler, with and without ``torch.compile``; next to
    torchvision's ``fcos_resnet50_fpn`` and effdet's EfficientDet-D0 measured in the same run;
    plus the data pipeline (fcos's DataLoader with workers and pinned memory at the batch size
    of the seed config, and the per-image decode + augment cost).
(c) peak memory of each throughput row (``torch.cuda.max_memory_allocated``; on CPU the
    process's peak RSS, which only grows, so it is given once).
(d) the calibration model, the QAT model and the integer model on the device agree with CPU bit
    for bit on a batch (raw head outputs), and TF32 is off once they exist.
(e) DDP as far as one device allows: a one-process group on nccl (gloo on CPU) with
    synchronised BatchNorm steps exactly like the plain model; two processes on one GPU are not
    possible with nccl, so several processes stay covered by the gloo tests
    (tests/engine/test_distributed.py, tests/integration/test_multinode.py).
(f) fcos-plugin-tensorrt (where the ``tensorrt`` package is installed): its tests, then the
    demo's deploy model (int8 head outputs) quantized, built into an engine, its agreement with
    the integer model, batch-1 latency and decoding; skipped with the reason elsewhere.

``--device cpu --quick`` runs every section on CPU at 128x128 with a few steps (CI runs it, see
tests/integration/test_gpu_check.py, so the script cannot rot); there CPU is compared with
itself and ``torch.compile`` rows are skipped. On a GPU: ``make gpu-check`` (about 5 minutes on
one GPU with the defaults). Exit code 1 when any check fails.

Usage::

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--size 512] [--batch N]
                                   [--steps N] [--no-compile] [--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no busy-waiting threads
os.environ.setdefault("FCOS_PROGRESS", "0")

import argparse
import contextlib
import copy
import datetime
import json
import resource
import socket
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "fcos_b0_demo.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train_loop's synthetic data

#: relative tolerance of each step's total loss, device vs CPU (float32 on both, TF32 off).
#: Not 1e-6: DynamicFcosTarget picks positives by a cost computed from the predictions, so a
#: rounding difference can move one positive and the loss by ~1e-3 (measured on CPU between
#: two BatchNorm implementations); a broken CUDA op moves it far more
LOSS_RTOL = 5e-3
#: the seed config's (configs/fcos_b0.yaml) batch size per GPU: the data pipeline must keep up
SEED_BATCH = 24


class Report:
    """The rows of the one table: section, check, value, status (ok / FAIL / info / skip)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, section: str, check: str, value: str, status: str = "info") -> None:
        self.rows.append({"section": section, "check": check, "value": value, "status": status})
        print(f"  [{status}] {section} {check}: {value}", file=sys.stderr, flush=True)

    def guard(self, section: str, check: str) -> Any:
        """A context manager: an exception inside becomes a FAIL row instead of a crash."""
        report = self

        class _Guard:
            def __enter__(self) -> None:
                return None

            def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
                if exc is not None and kind is not KeyboardInterrupt:
                    report.add(section, check, f"{type(exc).__name__}: {str(exc)[:200]}", "FAIL")
                    return True
                return False

        return _Guard()

    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def table(self) -> str:
        heads = ("section", "check", "value", "status")
        widths = [
            max(len(h), *(len(r[h]) for r in self.rows)) if self.rows else len(h) for h in heads
        ]
        line = "  ".join(h.ljust(w) for h, w in zip(heads, widths))
        out = [line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(r[h].ljust(w) for h, w in zip(heads, widths)) for r in self.rows]
        return "\n".join(out)


# --- set-up ------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Any:
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def load_demo(
    host: Any,
    data_root: Path,
    batch: int,
    size: int,
    classes: int | None = None,
    workers: int = 0,
    pin: bool = False,
    extra: tuple[str, ...] = (),
) -> Any:
    """The demo config, pointed at ``data_root``, at ``size`` with ``batch`` images a step."""
    from fcos_core.config import load_config

    # stochastic depth off: its masks come from different generators on CPU and CUDA
    overrides = [
        "vars.backbone.drop_connect_rate=0.0",
        f"vars.data_root={data_root}",
        f"vars.batch_size_per_gpu={batch}",
        f"vars.input_size={size}",
        f"data_loader.num_workers={workers}",
        f"data_loader.pin_memory={str(pin).lower()}",
        "float_predictor=null",
        f"ckpt_dir={data_root / 'ckpt'}",
    ]
    if classes is not None:  # the seed's 80 COCO classes for the throughput rows
        overrides += [
            f"vars.num_classes={classes}",
            f"vars.num_classes_with_background={classes + 1}",
        ]
    return load_config(DEMO, host, [*overrides, *extra])


def first_batches(cfg: Any, n: int) -> list[Any]:
    """The first ``n`` batches of the config's training data loader (seed 0), on CPU."""
    from fcos_core.build import build

    loader = build(cfg.node("data_loader"))
    loader.set_seed(0)
    loader.set_epoch(0)
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def _loop_standin() -> Any:
    """What MultiBatchProcessor records each step's losses into."""
    from fcos_core.engine.loop import LoopState

    return types.SimpleNamespace(state=LoopState(), stage="gpu_check")


def _peak_mib(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- (a) float steps, device vs CPU -------------------------------------------------------------


def float_steps(cfg: Any, init: dict[str, Any], batches: list[Any], device: Any) -> list[float]:
    """Each step's total loss of the demo's float stage from ``init`` on ``device``."""
    import torch

    from fcos_core.build import build
    from fcos_core.engine.runtime import seed_everything

    seed_everything(0)
    trainer = build(cfg.node("float_trainer"))  # its model, optimizer and batch processor
    model = trainer.model
    model.load_state_dict(init)
    model = model.to(device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = trainer._optimizer_spec.build(model=model)
    processor = trainer.batch_processor
    loop = _loop_standin()
    losses = []
    for batch in batches:
        processor(model, batch, device, optimizer, loop)
        losses.append(float(loop.state.last_losses["loss"]))
    return losses


def check_agreement(report: Report, host: Any, data_root: Path, device: Any, args: Any) -> None:
    import torch

    from fcos_core.build import build
    from fcos_core.models import cpu_kernels

    cfg = load_demo(host, data_root, args.agree_batch, 128)
    batches = first_batches(cfg, args.agree_steps)
    torch.manual_seed(0)
    init = copy.deepcopy(build(cfg.node("model")).state_dict())
    kernels_before = cpu_kernels._state["available"]
    with _tf32(False):
        dev = float_steps(cfg, init, batches, device)
        if device.type == "cuda":
            # the C++ kernels are CPU-only: CUDA training must not even build them
            loaded = cpu_kernels._state["available"] is not None and kernels_before is None
            report.add(
                "a",
                "C++ CPU kernels kept out of the CUDA steps",
                "loaded" if loaded else "not loaded",
                "FAIL" if loaded else "ok",
            )
        cpu = float_steps(cfg, init, batches, torch.device("cpu"))
    diffs = [abs(d - c) / max(abs(c), 1e-12) for d, c in zip(dev, cpu)]
    worst = max(diffs)
    report.add(
        "a",
        f"demo float stage, {len(batches)} steps x batch {args.agree_batch}: "
        f"{device.type} vs cpu loss (rtol {LOSS_RTOL:g})",
        f"rel diff step 1 {diffs[0]:.1e}, max {worst:.1e}; last loss {device.type} "
        f"{dev[-1]:.5f}, cpu {cpu[-1]:.5f}",
        "ok" if worst <= LOSS_RTOL else "FAIL",
    )


# --- (b, c) throughput and peak memory ----------------------------------------------------------


def synthetic_batches(host: Any, n: int, batch: int, size: int) -> list[Any]:
    from bench_train_loop import SyntheticDetection

    ds = SyntheticDetection(n * batch, size)
    collate = host.registries["collates"].lookup("collate_2d").load()
    return [collate([ds[i * batch + j] for j in range(batch)]) for i in range(n)]


def _time(step: Callable[[int], None], device: Any, warmup: int, steps: int) -> float:
    """Seconds per step after ``warmup`` untimed steps."""
    for i in range(warmup):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _fcos_variant(model: Any, variant: dict[str, Any], device: Any) -> Any:
    import torch

    from fcos_core.engine.batch_processor import MultiBatchProcessor

    m = copy.deepcopy(model).to(device)
    if variant["channels_last"]:
        m = m.to(memory_format=torch.channels_last)
    amp = variant["dtype"] is not None
    train = MultiBatchProcessor(
        need_grad_update=True, amp=amp, amp_dtype=variant["dtype"] or "float16"
    )
    infer = MultiBatchProcessor(
        need_grad_update=False, amp=amp, amp_dtype=variant["dtype"] or "float16"
    )
    run = torch.compile(m) if variant["compile"] else m
    return m, run, train, infer


FCOS_VARIANTS = [
    {"name": "fp32", "dtype": None, "channels_last": False, "compile": False},
    {"name": "fp32 channels-last", "dtype": None, "channels_last": True, "compile": False},
    {
        "name": "bf16 autocast, channels-last",
        "dtype": "bfloat16",
        "channels_last": True,
        "compile": False,
    },
    {
        "name": "fp16 autocast + GradScaler, channels-last",
        "dtype": "float16",
        "channels_last": True,
        "compile": False,
    },
    {
        "name": "fp32 channels-last, torch.compile",
        "dtype": None,
        "channels_last": True,
        "compile": True,
    },
    {
        "name": "bf16 autocast, channels-last, torch.compile",
        "dtype": "bfloat16",
        "channels_last": True,
        "compile": True,
    },
]


def check_throughput(
    report: Report, host: Any, data_root: Path, device: Any, args: Any
) -> dict[str, float]:
    """Images/s per row; returns the fcos train numbers (the data pipeline is held to them)."""
    import torch

    from fcos_core.build import build

    cfg = load_demo(host, data_root, args.batch, args.size, classes=80)
    torch.manual_seed(0)
    model = build(cfg.node("model"))
    batches = synthetic_batches(host, 2, args.batch, args.size)
    train_ips: dict[str, float] = {}
    for variant in FCOS_VARIANTS:
        if variant["compile"] and args.no_compile:
            report.add(
                "b", f"fcos B0+BiFPN {variant['name']}", "skipped (--no-compile / --quick)", "skip"
            )
            continue
        if variant["dtype"] == "float16" and device.type != "cuda":
            report.add("b", f"fcos B0+BiFPN {variant['name']}", "skipped (CUDA only)", "skip")
            continue
        name = f"fcos B0+BiFPN {variant['name']}"
        with report.guard("b", name):
            _reset_peak(device)
            m, run, train, infer = _fcos_variant(model, variant, device)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            m.train()
            t0 = time.perf_counter()
            train(run, batches[0], device, opt)  # a compiled model compiles here
            _sync(device)
            first = time.perf_counter() - t0
            sec = _time(
                lambda i: train(run, batches[i % 2], device, opt), device, args.warmup, args.steps
            )
            train_ips[variant["name"]] = args.batch / sec
            extra = f", first step {first:.1f} s" if variant["compile"] else ""
            report.add("b", f"{name} train", f"{args.batch / sec:.1f} img/s{extra}")
            report.add("c", f"{name} train peak", f"{_peak_mib(device):.0f} MiB")
            _reset_peak(device)
            m.eval()
            sec = _time(
                lambda i: infer(run, batches[i % 2], device), device, args.warmup, args.steps
            )
            report.add("b", f"{name} eval", f"{args.batch / sec:.1f} img/s")
            report.add("c", f"{name} eval peak", f"{_peak_mib(device):.0f} MiB")
            m = run = opt = None  # frees the device memory (the timed closures hold these)
    _reference_models(report, batches, device, args)
    return train_ips


def _reference_models(report: Report, batches: list[Any], device: Any, args: Any) -> None:
    """torchvision's FCOS-R50-FPN and effdet's D0, fp32 channels-last, same images."""
    import torch

    imgs = [b["img"].to(device).to(memory_format=torch.channels_last) for b in batches]
    targets = [
        [
            {"boxes": bx.to(device), "labels": c.to(device) + 1}
            for bx, c in zip(b["gt_bboxes"], b["gt_classes"])
        ]
        for b in batches
    ]
    with report.guard("b", "torchvision fcos_resnet50_fpn"):
        from torchvision.models.detection import fcos_resnet50_fpn

        torch.manual_seed(0)
        tv = fcos_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=81,
            min_size=args.size,
            max_size=args.size,
        ).to(device)
        tv = tv.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(tv.parameters(), lr=1e-4)

        def tv_train(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            sum(tv(list(imgs[i % 2]), targets[i % 2]).values()).backward()
            opt.step()

        _reset_peak(device)
        tv.train()
        sec = _time(tv_train, device, args.warmup, args.steps)
        report.add(
            "b",
            "torchvision fcos_resnet50_fpn fp32 channels-last train",
            f"{args.batch / sec:.1f} img/s",
        )
        report.add("c", "torchvision fcos_resnet50_fpn train peak", f"{_peak_mib(device):.0f} MiB")
        tv.eval()
        with torch.no_grad():
            sec = _time(lambda i: tv(list(imgs[i % 2])), device, args.warmup, args.steps)
        report.add(
            "b",
            "torchvision fcos_resnet50_fpn fp32 channels-last eval",
            f"{args.batch / sec:.1f} img/s",
        )
        tv = opt = None  # frees the device memory (the timed closures hold these)
    with report.guard("b", "effdet EfficientDet-D0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
        bench = bench.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(bench.parameters(), lr=1e-4)
        eff_targets = []
        for b in batches:
            n = max(len(x) for x in b["gt_bboxes"])
            bbox = torch.full((args.batch, n, 4), -1.0)
            cls = torch.full((args.batch, n), -1.0)
            for j, (bx, c) in enumerate(zip(b["gt_bboxes"], b["gt_classes"])):
                bbox[j, : len(bx)] = bx[:, [1, 0, 3, 2]]  # effdet wants yxyx
                cls[j, : len(bx)] = c.float() + 1
            eff_targets.append({"bbox": bbox.to(device), "cls": cls.to(device)})

        def eff_train(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            bench(imgs[i % 2], eff_targets[i % 2])["loss"].backward()
            opt.step()

        _reset_peak(device)
        bench.train()
        sec = _time(eff_train, device, args.warmup, args.steps)
        report.add("b", "effdet D0 fp32 channels-last train", f"{args.batch / sec:.1f} img/s")
        report.add("c", "effdet D0 train peak", f"{_peak_mib(device):.0f} MiB")
        net = bench.model.eval()  # the network without the loss (DetBenchTrain's .model)
        with torch.no_grad():
            sec = _time(lambda i: net(imgs[i % 2]), device, args.warmup, args.steps)
        report.add(
            "b", "effdet D0 fp32 channels-last eval (network)", f"{args.batch / sec:.1f} img/s"
        )
        bench = net = opt = None  # frees the device memory (the timed closures hold these)


def check_data_pipeline(
    report: Report, host: Any, data_root: Path, device: Any, args: Any, train_ips: dict[str, float]
) -> None:
    """fcos's DataLoader at the seed's batch size: does it outrun the training step?"""
    from fcos_core.build import build

    pin = device.type == "cuda"
    cfg = load_demo(host, data_root, args.data_batch, args.size, workers=args.workers, pin=pin)
    with report.guard("b", "data pipeline"):
        loader = build(cfg.node("data_loader"))
        loader.set_seed(0)
        ds = loader.dataset
        n = min(len(ds), 4 * args.data_batch)
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        per_image = (time.perf_counter() - t0) / n
        report.add(
            "b",
            "data: decode + augment per image (one process)",
            f"{per_image * 1e3:.1f} ms ({1 / per_image:.0f} img/s/worker)",
        )
        loader.set_epoch(0)
        it = iter(loader)
        next(it)  # workers started, first batch in
        t0 = time.perf_counter()
        count = 0
        for batch in it:
            batch["img"].to(device, non_blocking=True)
            count += int(batch["img"].shape[0])
        _sync(device)
        ips = count / max(time.perf_counter() - t0, 1e-9)
        fastest = max(train_ips.values()) if train_ips else 0.0
        report.add(
            "b",
            f"data: DataLoader batch {args.data_batch}, {args.workers} workers, "
            f"pin_memory={pin}, non-blocking copy",
            f"{ips:.0f} img/s vs fastest fcos train {fastest:.0f} img/s",
            "ok" if ips >= fastest or args.quick else "FAIL",
        )


# --- (d) quantized models, device vs CPU, bit for bit --------------------------------------------


def _raw(model: Any, img: Any) -> list[Any]:
    import torch

    with torch.no_grad():
        out = model(img)
    flat: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            flat.append(v.detach().cpu())
        elif isinstance(v, dict):
            for k in sorted(v):
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(out)
    return flat


def _bitwise(report: Report, what: str, model: Any, img: Any, device: Any) -> None:
    import torch

    cpu = _raw(model.cpu(), img)
    dev = _raw(copy.deepcopy(model).to(device), img.to(device))
    same = len(cpu) == len(dev) and all(
        a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(cpu, dev)
    )
    differ = sum(int((a != b).sum()) for a, b in zip(cpu, dev) if a.shape == b.shape)
    report.add(
        "d",
        f"{what}: {device.type} vs cpu, {len(cpu)} outputs",
        "bit-identical" if same else f"{differ} elements differ",
        "ok" if same else "FAIL",
    )


def check_quantized(report: Report, host: Any, data_root: Path, device: Any, args: Any) -> None:
    import torch

    from fcos_core.build import build
    from fcos_core.convert_context import ConvertContext
    from fcos_core.quantization.converters import (
        Float2Calibration,
        Float2QAT,
        QAT2Quantize,
        freeze_observers,
    )
    from fcos_core.quantization.exact_float import tf32_enabled
    from fcos_core.quantization.observers import PercentileObserver

    cfg = load_demo(host, data_root, 2, 128)
    backend = cfg.compile_backend.load()() if cfg.compile_backend is not None else None
    ctx = ConvertContext(
        example_inputs={"img": (1, 3, 128, 128)}, backend=backend, device="cpu", stage="calibration"
    )
    batches = first_batches(cfg, 2)
    img = batches[-1]["img"]
    torch.manual_seed(0)
    float_model = build(cfg.node("model")).eval()
    torch.backends.cudnn.allow_tf32 = True  # torch's default: the converters must undo it
    with report.guard("d", "calibration model"):
        percentile = PercentileObserver.with_args(percentile=99.99)
        calib = Float2Calibration(activation_observer=percentile)(copy.deepcopy(float_model), ctx)
        with torch.no_grad():
            calib(batches[0]["img"])
        freeze_observers(calib)
        report.add(
            "d",
            "TF32 after the conversions",
            "on" if tf32_enabled() else "off",
            "FAIL" if tf32_enabled() else "ok",
        )
        _bitwise(report, "calibration model", calib, img, device)
    source = calib
    if args.quick:  # one export less: QAT2Quantize also takes the calibration model
        report.add(
            "d",
            "QAT model",
            "skipped (--quick); the integer model is made from the calibration model",
            "skip",
        )
    else:
        with report.guard("d", "QAT model"):
            qat = Float2QAT()(copy.deepcopy(float_model), ctx)
            qat.load_state_dict(calib.state_dict(), strict=False)
            freeze_observers(qat)
            _bitwise(report, "QAT model (eval)", qat, img, device)
            source = qat
    with report.guard("d", "integer model"):
        quantized = QAT2Quantize()(copy.deepcopy(source).cpu(), ctx)
        _bitwise(report, "integer model", quantized, img, device)


# --- (e) DDP on one device ------------------------------------------------------------------------


def _first_step(model: Any, batch: Any, device: Any) -> tuple[float, dict[str, Any]]:
    """One forward + backward: (total loss, gradients by parameter name)."""
    from fcos_core.engine.device import to_device
    from fcos_core.engine.functions import collect_losses

    model.train()
    model.zero_grad(set_to_none=True)
    total = sum(loss.sum() for loss in collect_losses(model(to_device(batch, device))))
    total.backward()
    inner = getattr(model, "module", model)
    grads = {k: p.grad.detach().cpu() for k, p in inner.named_parameters() if p.grad is not None}
    return float(total), grads


def check_ddp(report: Report, host: Any, data_root: Path, device: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fcos_core.build import build
    from fcos_core.engine.sync_bn import convert_sync_batchnorm

    backend = "nccl" if device.type == "cuda" else "gloo"
    cfg = load_demo(host, data_root, 2, 128)
    batch = first_batches(cfg, 1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with report.guard("e", f"DDP on {backend}"):
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives run on the current device
        store = dist.TCPStore("127.0.0.1", port, 1, True)
        dist.init_process_group(
            backend, store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=120)
        )
        try:
            probe = torch.full((4,), 3.0, device=device)
            dist.all_reduce(probe)
            box = [{"rank": 0}]
            dist.broadcast_object_list(box, src=0)
            report.add(
                "e",
                f"{backend} process group, 1 process: all_reduce, broadcast_object",
                f"{float(probe[0]):g}, {box[0]}",
                "ok" if float(probe[0]) == 3.0 and box[0] == {"rank": 0} else "FAIL",
            )
            torch.manual_seed(0)
            base = build(cfg.node("model")).to(device).to(memory_format=torch.channels_last)
            ids = [device.index or 0] if device.type == "cuda" else None
            with _tf32(False):
                ref_loss, ref = _first_step(copy.deepcopy(base), batch, device)
                for name, sync_bn in (("DDP", False), ("DDP + SyncBatchNorm", True)):
                    m = copy.deepcopy(base)
                    if sync_bn:
                        m = convert_sync_batchnorm(m, device)
                    loss, grads = _first_step(
                        DistributedDataParallel(m, device_ids=ids), batch, device
                    )
                    scale = max(float(g.abs().max()) for g in ref.values())
                    worst = max(float((grads[k] - g).abs().max()) for k, g in ref.items()) / scale
                    rel = abs(loss - ref_loss) / abs(ref_loss)
                    # DDP alone must not change a single-process step. torch's SyncBatchNorm
                    # in a one-process group runs plain batch_norm (so CUDA is held to the
                    # same tolerance); fcos's CPU version sums in another order, and the
                    # dynamic target assignment can turn that rounding into another positive,
                    # so on CPU it is shown, not judged
                    tol = 1e-5 if not sync_bn else 1e-3  # cuDNN weight grads: atomics
                    good = rel <= tol and (sync_bn or worst <= tol)
                    status = (
                        "info" if sync_bn and device.type != "cuda" else ("ok" if good else "FAIL")
                    )
                    report.add(
                        "e",
                        f"{name}, 1 process on {backend}: first step vs plain (tol {tol:g})",
                        f"loss rel diff {rel:.1e}, max grad diff {worst:.1e} of max |grad|",
                        status,
                    )
        finally:
            dist.destroy_process_group()
    report.add(
        "e",
        "several processes",
        "covered by the gloo tests (test_distributed.py, "
        "test_multinode.py): nccl needs one GPU per process",
        "info",
    )


# --- (f) the TensorRT backend ----------------------------------------------------------------


def check_tensorrt(report: Report, host: Any, data_root: Path, device: Any, args: Any) -> None:
    """fcos-plugin-tensorrt on the GPU: its tests, then the demo's deploy model as an engine."""
    import subprocess

    import torch

    from fcos_core.build import build
    from fcos_core.convert_context import ConvertContext
    from fcos_core.quantization.converters import Float2Calibration, QAT2Quantize, freeze_observers
    from fcos_core.quantization.observers import PercentileObserver

    try:
        from fcos_plugin_tensorrt.backend import TensorRTBackend
        from fcos_plugin_tensorrt.runtime import tensorrt_missing
    except ImportError as exc:
        report.add(
            "f", "TensorRT backend", f"skipped: fcos-plugin-tensorrt not installed ({exc})", "skip"
        )
        return
    why = tensorrt_missing() if device.type == "cuda" else "a CPU run"
    if why is not None:
        report.add("f", "TensorRT backend", f"skipped: {why}", "skip")
        return
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "plugins" / "tensorrt" / "tests"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    last = (tests.stdout.strip().splitlines() or ["no output"])[-1]
    report.add(
        "f", "plugins/tensorrt/tests on this GPU", last, "ok" if tests.returncode == 0 else "FAIL"
    )
    # TensorRT's Q/DQ is int8 only: the demo's head with int8 outputs
    cfg = load_demo(
        host,
        data_root,
        2,
        128,
        extra=("deploy_model.head.int8_output=true", "deploy_model.head.int16_output=false"),
    )
    backend = TensorRTBackend()
    ctx = ConvertContext(
        example_inputs={"img": (1, 3, 128, 128)}, backend=backend, device="cpu", stage="int_infer"
    )
    batch = first_batches(cfg, 1)[0]
    torch.manual_seed(0)
    percentile = PercentileObserver.with_args(percentile=99.99)
    calib = Float2Calibration(activation_observer=percentile)(
        build(cfg.node("deploy_model")).eval(), ctx
    )
    with torch.no_grad():
        calib(batch["img"])  # activation ranges from one batch
    freeze_observers(calib)
    quantized = QAT2Quantize()(calib, ctx)
    with tempfile.TemporaryDirectory(prefix="fcos-trt-") as tmp:
        result = backend.compile(
            quantized,
            {"img": batch["img"]},
            {
                "out_dir": tmp,
                "name": "demo",
                "device": device.index or 0,
                "latency_runs": 200,
                "warmup_runs": 20,
            },
            Path(tmp),
        )
        rep = result.report
        agree = rep["agreement"]
        report.add(
            "f",
            "TensorRT int8 engine vs fcos integer model, demo deploy model (within 1 step >= 0.99)",
            f"within 0: {agree['within_0']:.4f}, within 1: "
            f"{agree['within_1']:.4f}, max {agree['max_steps']} steps",
            "ok" if agree["within_1"] >= 0.99 else "FAIL",
        )
        lat = rep["latency"]
        report.add(
            "f",
            "TensorRT engine latency, batch 1, 128x128",
            f"p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms "
            f"(TensorRT {rep['build']['tensorrt']})",
        )
        program = backend.load(result.artifact)
        dets = backend.detect(program, batch["img"])
        report.add(
            "f",
            "TensorRT engine: load + detect",
            f"{len(dets)} images decoded",
            "ok" if len(dets) == int(batch["img"].shape[0]) else "FAIL",
        )


# --- driver -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 128x128, batch 1, a few steps, no torch.compile",
    )
    p.add_argument("--size", type=int, default=512, help="throughput image size")
    p.add_argument(
        "--batch",
        type=int,
        default=SEED_BATCH,
        help=f"throughput batch size (default {SEED_BATCH}, the seed config's)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per throughput row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--agree-steps", type=int, default=5, help="float steps of section (a)")
    p.add_argument("--agree-batch", type=int, default=4, help="batch of section (a)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the data row")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.data_batch = SEED_BATCH
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 128, 2, 1, 0
        args.agree_steps, args.agree_batch, args.workers = 2, 2, 0
        args.data_batch, args.no_compile = 4, True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from fcos_core.logging_setup import configure_logging
    from fcos_core.plugins import load_host

    configure_logging(None, level="warning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(args.device)
    report = Report()
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but CUDA is not available; use --device cpu --quick for "
            "the CPU smoke run",
            file=sys.stderr,
        )
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report.add("-", "device", f"{name}; torch {torch.__version__}", "info")
    t_start = time.perf_counter()
    host = load_host()
    from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo

    with tempfile.TemporaryDirectory(prefix="fcos-gpu-check-") as tmp:
        data_root = Path(tmp) / "demo"
        ensure_demo(str(data_root), DemoParams(num_train=max(32, 4 * args.data_batch), num_val=8))
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("a", lambda: check_agreement(report, host, data_root, device, args)),
            ("d", lambda: check_quantized(report, host, data_root, device, args)),
            ("e", lambda: check_ddp(report, host, data_root, device)),
        ]
        for section, fn in sections:
            t0 = time.perf_counter()
            with report.guard(section, "section"):
                fn()
            print(f"  section {section}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        train_ips: dict[str, float] = {}
        with report.guard("b", "section"):
            train_ips = check_throughput(report, host, data_root, device, args)
        with report.guard("b", "data pipeline section"):
            check_data_pipeline(report, host, data_root, device, args, train_ips)
        with report.guard("f", "TensorRT section"):
            check_tensorrt(report, host, data_root, device, args)
    if device.type != "cuda":
        report.add("c", "process peak RSS", f"{_peak_mib(device):.0f} MiB", "info")
    report.add("-", "wall time", f"{time.perf_counter() - t_start:.0f} s", "info")
    print(report.table(), flush=True)
    if args.json:
        from fcos_core.atomic_write import write_atomically

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {
                "device": name,
                "quick": args.quick,
                "size": args.size,
                "batch": args.batch,
                "rows": report.rows,
            },
            indent=1,
        ).encode()
        write_atomically(out, lambda f: f.write(text))
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
