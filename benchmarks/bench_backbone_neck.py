"""Backbone + neck speed: fcos's seed EfficientNet-B0 (relu, no SE) + BiFPN (sum) against
effdet's EfficientDet-D0 backbone (timm efficientnet_b0, swish + SE) + BiFPN (fast attention).

Times eval forward and train forward+backward per image at 512x512, batch 1 and 4, with the
contiguous (NCHW) and channels-last memory formats, all in one run so the ratios compare like
with like. Nothing is downloaded: both models are randomly initialised.

    .venv/bin/python benchmarks/bench_backbone_neck.py            # full (minutes)
    .venv/bin/python benchmarks/bench_backbone_neck.py --quick    # smoke test (seconds)
    ... --clock cpu      # CPU time instead of elapsed time, when other jobs share the cores

Each (batch, format) pair times the models alternately, rep by rep, and reports the fastest
rep per image (the training median too). Both sides get the same generic levers (threads,
wait policy, memory format; the ratio takes each side at its fastest format).

Our plugins run three things faster than stock PyTorch in eager CPU training, through
``fcos_core.models`` (``fast_conv``, ``fast_batchnorm`` and the C++ kernels of ``cpu_kernels``;
same forward, results equal to float32 rounding): the weight gradients of depthwise and
channels-last 1x1 convs, and BatchNorm with its ReLU fused. Two more rows show what that is
worth: "ours, stock ops" switches them off, and "effdet + fcos kernels" gives effdet's plain
``nn.Conv2d`` layers the same weight gradients and its BatchNorm layers the same kernel (its
activation, SiLU, stays a separate op): like for like, the kernels are the same, only the
networks differ. The target is judged on the models as shipped; the like-for-like ratio is
printed next to it. ``--no-extra-rows`` times only the two shipped models.

Large tensors go on transparent huge pages for both models (``THP_MEM_ALLOC_ENABLE=1``, what
``fcos run`` sets; ``--no-thp`` turns it off): at batch 4 a page fault per 4 KB of each fresh
100 MB activation otherwise costs both models a quarter of their step.

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
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 256x256, batch 1, 1 warm-up + 2 timed reps",
    )
    p.add_argument("--size", type=int, default=512, help="square input size (multiple of 128)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    p.add_argument(
        "--reps",
        type=int,
        default=5,
        help="timed repetitions; the fastest is reported (and the training median)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, which other processes "
        "on shared cores barely disturb (a work measure, not a latency)",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["contiguous", "channels_last"],
        choices=("contiguous", "channels_last"),
        help="memory formats to time",
    )
    p.add_argument(
        "--no-extra-rows",
        dest="extra_rows",
        action="store_false",
        help="time only the two shipped models (not 'ours, stock ops' and 'effdet + fcos kernels')",
    )
    p.add_argument(
        "--no-thp",
        dest="thp",
        action="store_false",
        help="leave large tensors on 4 KB pages (THP_MEM_ALLOC_ENABLE unset)",
    )
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
# read once by torch's allocator, so also before torch is imported
if ARGS.thp:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
else:
    os.environ.pop("THP_MEM_ALLOC_ENABLE", None)

import types  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fcos_core.models import cpu_kernels, fast_batchnorm, fast_conv  # noqa: E402
from fcos_plugin_bifpn.model import BiFPN  # noqa: E402
from fcos_plugin_efficientnet.model import EfficientNet  # noqa: E402

CLOCK = time.process_time if ARGS.clock == "cpu" else time.perf_counter

SEED_NECK = dict(
    in_strides=[2, 4, 8, 16, 32],
    out_strides=[8, 16, 32, 64, 128],
    stride2channels={2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
    out_channels=64,
    num_outs=5,
    stack=3,
    start_level=2,
    end_level=-1,
    fpn_name="bifpn_sum",
)


class BackboneNeck(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(list(self.backbone(x)))


def build_ours() -> nn.Module:
    return BackboneNeck(
        EfficientNet("b0", activation="relu", use_se_block=False), BiFPN(**SEED_NECK)
    )


def build_effdet_d0(size: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet import create_model

        # effdet fixes its feature sizes at construction: build it for the size we time
        d0 = create_model(
            "efficientdet_d0", pretrained=False, pretrained_backbone=False, image_size=(size, size)
        )
    return BackboneNeck(d0.backbone, d0.fpn)


@contextmanager
def stock_ops() -> Iterator[None]:
    """Our plugins' layers with PyTorch's own ops (fast_conv and fast_batchnorm switched off)."""
    saved = fast_conv.ENABLED, fast_batchnorm.ENABLED
    fast_conv.ENABLED = fast_batchnorm.ENABLED = False
    try:
        yield
    finally:
        fast_conv.ENABLED, fast_batchnorm.ENABLED = saved


def _fast_grad_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if fast_conv.use_fast_weight_grad(self, x):
        return fast_conv._FastWeightGradConv2d.apply(
            x, self.weight, self.stride, self.padding, self.groups
        )
    return nn.Conv2d.forward(self, x)


def _fused_bn_act_forward(self: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """timm's BatchNormAct2d (BN -> drop -> act) with the BN through our kernel; the checks
    are those of ``fast_batchnorm.use_fused_batch_norm`` less its exact-type test."""
    if (
        self.training
        and torch.is_grad_enabled()
        and self.affine
        and self.track_running_stats
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[2] * x.shape[3] > 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and cpu_kernels.available()
    ):
        return self.act(self.drop(fast_batchnorm.batch_norm_act(self, x, relu=False)))
    return type(self).forward(self, x)


def with_fcos_kernels(model: nn.Module) -> nn.Module:
    """Give every plain ``nn.Conv2d`` of ``model`` our weight gradients and every BatchNorm
    our BatchNorm kernel (in place; the forward values are unchanged). Returns the model."""
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.forward = types.MethodType(_fast_grad_conv_forward, m)
        elif isinstance(m, nn.BatchNorm2d) and hasattr(m, "act") and hasattr(m, "drop"):
            m.forward = types.MethodType(_fused_bn_act_forward, m)
    return model


def prepare(
    model: nn.Module, batch: int, size: int, channels_last: bool, stock: bool = False
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(eval forward, train forward+backward) closures for one model, batch and format;
    ``stock`` runs them with our kernels switched off."""
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

    if not stock:
        return infer, train_step

    def infer_stock() -> None:
        with stock_ops():
            infer()

    def train_stock() -> None:
        with stock_ops():
            train_step()

    return infer_stock, train_stock


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


OURS, EFFDET = "fcos b0-relu + BiFPN-sum", "effdet D0 b0 + BiFPN-fa"
OURS_STOCK, EFFDET_FAST = "  ours, stock ops", "  effdet + fcos kernels"


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    ours = build_ours()
    # name -> (model, run with our kernels switched off)
    models: dict[str, tuple[nn.Module, bool]] = {
        OURS: (ours, False),
        EFFDET: (build_effdet_d0(ARGS.size), False),
    }
    if ARGS.extra_rows:
        models[OURS_STOCK] = (ours, True)  # the same module, timed with stock weight grads
        models[EFFDET_FAST] = (with_fcos_kernels(build_effdet_d0(ARGS.size)), False)
    print(
        f"torch {torch.__version__}, {ARGS.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
        f"C++ kernels {'on' if cpu_kernels.available() else 'OFF: ' + str(cpu_kernels.error())}, "
        f"input {ARGS.size}x{ARGS.size}, "
        f"best of {ARGS.reps} interleaved reps after {ARGS.warmup} warm-up, "
        f"{ARGS.clock} clock"
        f"{' (QUICK: timings are only a smoke test)' if ARGS.quick else ''}"
    )
    for name in (OURS, EFFDET):
        n = sum(p.numel() for p in models[name][0].parameters())
        print(f"  {name}: {n / 1e6:.3f} M parameters")
    results: dict[tuple[str, int, str], tuple[float, float]] = {}
    header = (
        f"{'model':<26} {'batch':>5} {'format':<13} {'fwd ms/img':>11} "
        f"{'train ms/img':>13} {'train median':>13}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for batch in ARGS.batches:
        for fmt in ARGS.formats:
            fns = {
                name: prepare(model, batch, ARGS.size, fmt == "channels_last", stock)
                for name, (model, stock) in models.items()
            }
            fwd = time_interleaved({k: f[0] for k, f in fns.items()}, ARGS.reps, ARGS.warmup)
            train = time_interleaved({k: f[1] for k, f in fns.items()}, ARGS.reps, ARGS.warmup)
            for name in models:
                # the minimum is the least disturbed run (timeit's advice on shared machines)
                results[(name, batch, fmt)] = (min(fwd[name]) / batch, min(train[name]) / batch)
                med = statistics.median(train[name]) / batch
                f, t = results[(name, batch, fmt)]
                print(
                    f"{name:<26} {batch:>5} {fmt:<13} {f * 1e3:>11.1f} {t * 1e3:>13.1f} "
                    f"{med * 1e3:>13.1f}",
                    flush=True,
                )

    def fastest(name: str, batch: int, what: int) -> tuple[float, str]:
        fmt = min(ARGS.formats, key=lambda f: results[(name, batch, f)][what])
        return results[(name, batch, fmt)][what], fmt

    print("\nratios (effdet time / ours; > 1 means ours is faster)")
    met = True
    for batch in ARGS.batches:
        for fmt in ARGS.formats:
            o, r = results[(OURS, batch, fmt)], results[(EFFDET, batch, fmt)]
            print(
                f"  batch {batch} {fmt:<13}: forward {r[0] / o[0]:.2f}x, train {r[1] / o[1]:.2f}x"
            )
        (o_f, o_ff), (r_f, r_ff) = fastest(OURS, batch, 0), fastest(EFFDET, batch, 0)
        (o_t, o_tf), (r_t, r_tf) = fastest(OURS, batch, 1), fastest(EFFDET, batch, 1)
        ratio = r_t / o_t
        met &= ratio >= 1.5
        verdict = "met" if ratio >= 1.5 else "NOT met"
        print(
            f"  batch {batch} each at its fastest: forward {r_f / o_f:.2f}x (ours {o_ff}, "
            f"effdet {r_ff}); train {ratio:.2f}x per image (ours {o_tf}, effdet {r_tf}; "
            f"target >= 1.5x: {verdict})"
        )
        if ARGS.extra_rows:
            s_t, s_tf = fastest(OURS_STOCK, batch, 1)
            e_t, e_tf = fastest(EFFDET_FAST, batch, 1)
            print(
                f"    fcos kernels: ours {s_t / o_t:.2f}x faster than with stock ops "
                f"({s_tf}), effdet {r_t / e_t:.2f}x faster with them ({e_tf}); "
                f"like for like (both stock {r_t / s_t:.2f}x, both with the kernels "
                f"{e_t / o_t:.2f}x)"
            )
    print(
        f"\ntraining target (>= 1.5x per image at every batch size): {'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
