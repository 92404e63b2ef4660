"""Backbone + neck speed: fcos's seed EfficientNet-B0 (relu, no SE) + BiFPN (sum) against
effdet's EfficientDet-D0 backbone (timm efficientnet_b0, swish + SE) + BiFPN (fast attention).

Times eval forward and train forward+backward per image at 512x512, batch 1 and 4, with the
contiguous (NCHW) and channels-last memory formats, all in one run so the ratios compare like
with like. Nothing is downloaded: both models are randomly initialised.

    .venv/bin/python benchmarks/bench_backbone_neck.py            # full (minutes)
    .venv/bin/python benchmarks/bench_backbone_neck.py --quick    # smoke test (seconds)
    ... --clock cpu      # CPU time instead of elapsed time, when other jobs share the cores

Each (batch, format) pair times the two models alternately, rep by rep, and reports the
fastest rep per image (the training median too). The backward of depthwise convolutions
(oneDNN) is a large shared cost of both models on CPU, which caps the ratio.

Target (issue 4): ours at least 1.5x faster per image in training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 256x256, batch 1, 1 warm-up + 2 timed reps")
    p.add_argument("--size", type=int, default=512, help="square input size (multiple of 128)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    p.add_argument("--reps", type=int, default=5,
                   help="timed repetitions; the fastest is reported (and the training median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time, which other processes "
                        "on shared cores barely disturb (a work measure, not a latency)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.reps, args.warmup = 256, [1], 2, 1
    if args.size % 128:
        p.error(f"--size must be a multiple of 128 (the coarsest stride), got {args.size}")
    return args


ARGS = parse_args()
# before torch is imported: OpenMP busy-waiting wrecks timings on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fcos_plugin_bifpn.model import BiFPN  # noqa: E402
from fcos_plugin_efficientnet.model import EfficientNet  # noqa: E402

CLOCK = time.process_time if ARGS.clock == "cpu" else time.perf_counter

SEED_NECK = dict(in_strides=[2, 4, 8, 16, 32], out_strides=[8, 16, 32, 64, 128],
                 stride2channels={2: 16, 4: 24, 8: 40, 16: 112, 32: 320}, out_channels=64,
                 num_outs=5, stack=3, start_level=2, end_level=-1, fpn_name="bifpn_sum")


class BackboneNeck(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(list(self.backbone(x)))


def build_ours() -> nn.Module:
    return BackboneNeck(EfficientNet("b0", activation="relu", use_se_block=False),
                        BiFPN(**SEED_NECK))


def build_effdet_d0(size: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet import create_model

        # effdet fixes its feature sizes at construction: build it for the size we time
        d0 = create_model("efficientdet_d0", pretrained=False, pretrained_backbone=False,
                          image_size=(size, size))
    return BackboneNeck(d0.backbone, d0.fpn)


def prepare(model: nn.Module, batch: int, size: int, channels_last: bool):
    """(eval forward, train forward+backward) closures for one model, batch and format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()

    return infer, train_step


def time_interleaved(fns: dict[str, object], reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating between them rep by rep so that load
    from other processes on shared cores hits every model alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = CLOCK()
            fn()
            times[name].append(CLOCK() - start)
    return times


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    models = {"fcos b0-relu + BiFPN-sum": build_ours(),
              "effdet D0 b0 + BiFPN-fa": build_effdet_d0(ARGS.size)}
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"torch {torch.__version__}, {ARGS.threads} threads, input {ARGS.size}x{ARGS.size}, "
          f"best of {ARGS.reps} interleaved reps after {ARGS.warmup} warm-up, "
          f"{ARGS.clock} clock"
          f"{' (QUICK: timings are only a smoke test)' if ARGS.quick else ''}")
    for name, n in n_params.items():
        print(f"  {name}: {n / 1e6:.3f} M parameters")
    results: dict[tuple[str, int, str], tuple[float, float]] = {}
    header = (f"{'model':<26} {'batch':>5} {'format':<13} {'fwd ms/img':>11} "
              f"{'train ms/img':>13} {'train median':>13}")
    print("\n" + header + "\n" + "-" * len(header))
    for batch in ARGS.batches:
        for fmt in ("contiguous", "channels_last"):
            fns = {name: prepare(model, batch, ARGS.size, fmt == "channels_last")
                   for name, model in models.items()}
            fwd = time_interleaved({k: f[0] for k, f in fns.items()}, ARGS.reps, ARGS.warmup)
            train = time_interleaved({k: f[1] for k, f in fns.items()}, ARGS.reps, ARGS.warmup)
            for name in models:
                # the minimum is the least disturbed run (timeit's advice on shared machines)
                results[(name, batch, fmt)] = (min(fwd[name]) / batch, min(train[name]) / batch)
                med = statistics.median(train[name]) / batch
                f, t = results[(name, batch, fmt)]
                print(f"{name:<26} {batch:>5} {fmt:<13} {f * 1e3:>11.1f} {t * 1e3:>13.1f} "
                      f"{med * 1e3:>13.1f}", flush=True)

    ours, ref = list(models)
    print("\nratios (effdet time / ours; > 1 means ours is faster)")
    met = True
    for batch in ARGS.batches:
        for fmt in ("contiguous", "channels_last"):
            o, r = results[(ours, batch, fmt)], results[(ref, batch, fmt)]
            print(f"  batch {batch} {fmt:<13}: forward {r[0] / o[0]:.2f}x, "
                  f"train {r[1] / o[1]:.2f}x")
        best_o = min(("contiguous", "channels_last"), key=lambda f: results[(ours, batch, f)][1])
        best_r = min(("contiguous", "channels_last"), key=lambda f: results[(ref, batch, f)][1])
        ratio = results[(ref, batch, best_r)][1] / results[(ours, batch, best_o)][1]
        met &= ratio >= 1.5
        verdict = "met" if ratio >= 1.5 else "NOT met"
        print(f"  batch {batch} each at its fastest (ours {best_o}, effdet {best_r}): "
              f"train {ratio:.2f}x per image (target >= 1.5x: {verdict})")
    print(f"\ntraining target (>= 1.5x per image at every batch size): "
          f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
