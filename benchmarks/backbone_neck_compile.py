"""torch.compile (inductor, CPU) of the backbone + neck training step, against eager, for fcos's
seed B0-relu + BiFPN-sum and effdet's D0 backbone + BiFPN, in one run (a companion of
bench_backbone_neck.py; the engine trains eagerly, this measures whether compiling would pay).

    .venv/bin/python benchmarks/backbone_neck_compile.py              # batch 1, 512x512
    .venv/bin/python benchmarks/backbone_neck_compile.py --quick      # 256x256 smoke test

Not named ``bench_*.py`` on purpose: ``make bench`` runs those, and compiling takes minutes
(3-5 per model with a cold inductor cache on 2 cores).

Channels-last, 2 threads, OMP_WAIT_POLICY=PASSIVE. Prints the compile time (first compiled
step) of each model, then eager and compiled train forward+backward per image, interleaved rep
by rep (fastest rep and median). Inside a compiled graph our plugins' fast weight gradients are
off (they apply to eager training only), so compiled fcos uses oneDNN's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256x256, 1 warm-up + 2 reps")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.size, args.reps, args.warmup = 256, 2, 1
    return args


ARGS = parse_args()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_argv, sys.argv = sys.argv, sys.argv[:1]  # the companion parses the command line on import
from bench_backbone_neck import build_effdet_d0, build_ours  # noqa: E402

sys.argv = _argv


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size).to(memory_format=cl)
    eager = {
        "fcos b0-relu + BiFPN-sum": build_ours().to(memory_format=cl),
        "effdet D0 b0 + BiFPN-fa": build_effdet_d0(ARGS.size).to(memory_format=cl),
    }

    def step(model: torch.nn.Module) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        sum(o.float().mean() for o in model(x)).backward()

    print(
        f"torch {torch.__version__}, {ARGS.threads} threads, input {ARGS.batch}x3x{ARGS.size}"
        f"x{ARGS.size}, channels-last, best of {ARGS.reps} interleaved reps"
    )
    fns = {}
    for name, model in eager.items():
        compiled = torch.compile(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            step(compiled)
            print(f"  {name}: compile + first step {time.perf_counter() - start:.1f} s", flush=True)
        fns[f"{name} eager"] = lambda m=model: step(m)
        fns[f"{name} compiled"] = lambda m=compiled: step(m)
    for _ in range(ARGS.warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(ARGS.reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) / ARGS.batch * 1e3)
    print(f"\n{'model':<36} {'train ms/img':>13} {'median':>8}")
    for k, t in times.items():
        print(f"{k:<36} {min(t):>13.1f} {statistics.median(t):>8.1f}")
    best = {
        name: min(min(times[f"{name} eager"]), min(times[f"{name} compiled"])) for name in eager
    }
    ours, ref = list(eager)
    eager_ratio = min(times[f"{ref} eager"]) / min(times[f"{ours} eager"])
    compiled_ratio = min(times[f"{ref} compiled"]) / min(times[f"{ours} compiled"])
    print(
        f"\ntrain ratio effdet / ours: eager {eager_ratio:.2f}x, compiled {compiled_ratio:.2f}x, "
        f"each at its fastest {best[ref] / best[ours]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
