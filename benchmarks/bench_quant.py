"""Quantization cost: a calibration step and a QAT step next to a float step, same run.

Builds the seed body (EfficientNet-B0 relu/no-SE + BiFPN sum + FCOSHead, int16 outputs) when
fcos_core.models and the efficientnet/bifpn plugins import, else a small stand-in
(conv-BN-ReLU, depthwise, add, max-pool, upsample). Times, per image:

* float: eval forward (no grad) and train forward+backward;
* calibration: forward through the Float2Calibration model (observers on the float model),
  for each activation observer (mse, minmax, percentile, kl), plus the one-off clip search
  when calibration ends (``freeze_observers``);
* QAT: forward+backward through the Float2QAT model;
* the integer model (QAT2Quantize output) forward.

Also prints the one-off costs (conversion = torch.export + prepare) and checks the QAT and
integer outputs agree (share of elements within one output step).

    .venv/bin/python benchmarks/bench_quant.py --quick      # smoke test (stand-in size)
    .venv/bin/python benchmarks/bench_quant.py              # seed body at 512x512, batch 2
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
    p.add_argument("--quick", action="store_true", help="smoke test: 128x128, batch 2, 2 reps")
    p.add_argument("--size", type=int, default=512, help="square input size (multiple of 128)")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--standin",
        action="store_true",
        help="use the stand-in even if the seed model is importable",
    )
    p.add_argument(
        "--observers",
        nargs="+",
        default=["mse", "minmax", "percentile", "kl"],
        choices=["mse", "minmax", "percentile", "kl"],
        help="calibration observers to time",
    )
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.quick:
    ARGS.size, ARGS.batch, ARGS.reps = 128, 2, 2
# before torch is imported: OpenMP busy-waiting wrecks timings on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from fcos_core.convert_context import ConvertContext  # noqa: E402
from fcos_core.quantization.converters import (  # noqa: E402
    Float2Calibration,
    Float2QAT,
    QAT2Quantize,
    freeze_observers,
)
from fcos_core.quantization.histogram_observers import KLObserver, MSEObserver  # noqa: E402
from fcos_core.quantization.observers import MinMaxObserver, PercentileObserver  # noqa: E402

#: observer name (as a config's activation_observer block says it) -> constructor
OBSERVERS = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver.with_args(stride=8),
}

torch.set_num_threads(ARGS.threads)


class StandIn(nn.Module):
    """Small body with the seed's op mix; outputs int16 like the seed head."""

    def __init__(self) -> None:
        super().__init__()
        self.int8_output, self.int16_output, self.dequant_output = False, True, True

        def cbr(i: int, o: int, s: int = 1, g: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, s, 1, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU()
            )

        self.stem = cbr(3, 32, 2)
        self.s1 = nn.Sequential(cbr(32, 32, 1, 32), nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.down = cbr(32, 64, 2)
        self.down2 = cbr(64, 64, 2)
        self.out = nn.Conv2d(64, 85, 3, padding=1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(img)
        x = x + self.s1(x)
        a = self.down(x)
        b = self.down2(a)
        a = F.relu(a + F.interpolate(F.max_pool2d(a, 2) + b, scale_factor=2.0, mode="nearest"))
        return self.out(a), self.out(b)


def build_body() -> tuple[nn.Module, str]:
    if not ARGS.standin:
        try:
            from fcos_core.models.body import FCOSBody
            from fcos_core.models.head import FCOSHead
            from fcos_plugin_bifpn.model import BiFPN
            from fcos_plugin_efficientnet.model import EfficientNet

            neck = dict(
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
            head = FCOSHead(
                num_classes=80,
                in_strides=[8, 16, 32, 64, 128],
                out_strides=[8, 16, 32, 64, 128],
                stride2channels=dict.fromkeys((8, 16, 32, 64, 128), 64),
                feat_channels=64,
                stacked_convs=4,
                int8_output=False,
                int16_output=True,
                dequant_output=True,
            )
            body = FCOSBody(
                EfficientNet("b0", activation="relu", use_se_block=False), BiFPN(**neck), head
            )
            return body, "seed EfficientNet-B0 + BiFPN + FCOSHead"
        except Exception as exc:  # noqa: BLE001 - any import/build failure -> stand-in
            print(f"seed model unavailable ({type(exc).__name__}: {exc}); using the stand-in")
    return StandIn(), "stand-in"


def images(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(ARGS.batch, 3, ARGS.size, ARGS.size, generator=g) * 2 - 1


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) / ARGS.batch


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = sum(o.float().square().mean() for o in model(x))
    grads = torch.autograd.grad(loss, params)
    del grads


def main() -> int:
    ctx = ConvertContext(example_inputs={"img": (ARGS.batch, 3, ARGS.size, ARGS.size)})
    torch.manual_seed(0)
    body, what = build_body()
    body.eval()
    x = images(0)
    print(
        f"model: {what}; input {ARGS.batch}x3x{ARGS.size}x{ARGS.size}; "
        f"threads {ARGS.threads}; times per image, median of {ARGS.reps}"
    )

    rows: list[tuple[str, float]] = []
    with torch.no_grad():
        rows.append(("float eval forward", timed(lambda: body(x), ARGS.reps)))
    body.train()
    rows.append(("float train step (fwd+bwd)", timed(lambda: train_step(body, x), ARGS.reps)))
    body.eval()

    import copy

    for name in ARGS.observers:
        t = time.perf_counter()
        cal = Float2Calibration(activation_observer=OBSERVERS[name])(copy.deepcopy(body), ctx)
        convert_s = time.perf_counter() - t
        seeds = iter(range(1, 10_000))
        with torch.no_grad():
            step = timed(lambda: cal(images(next(seeds))), ARGS.reps)
        t = time.perf_counter()
        freeze_observers(cal)  # the clip search of every observer runs here, once
        finish_s = time.perf_counter() - t
        rows.append(
            (
                (
                    f"calibration step ({name}; conversion {convert_s:.1f} s, "
                    f"finish {finish_s:.1f} s)"
                ),
                step,
            )
        )
        if name == ARGS.observers[0]:
            calibrated_sd = cal.state_dict()

    t = time.perf_counter()
    qat = Float2QAT()(copy.deepcopy(body), ctx)
    convert_s = time.perf_counter() - t
    qat.load_state_dict(calibrated_sd)
    qat.train()
    rows.append(
        (
            f"QAT train step (fwd+bwd; conversion {convert_s:.1f} s)",
            timed(lambda: train_step(qat, x), ARGS.reps),
        )
    )
    exact_train = Float2QAT(integer_exact="always")(copy.deepcopy(body), ctx)
    exact_train.load_state_dict(calibrated_sd)
    exact_train.train()
    rows.append(
        (
            "QAT train step, integer_exact: always",
            timed(lambda: train_step(exact_train, x), ARGS.reps),
        )
    )
    exact_train = None  # frees it (the timed closure holds the name)
    qat.eval()
    freeze_observers(qat)
    plain = Float2QAT(integer_exact="off")(copy.deepcopy(body), ctx)
    plain.load_state_dict(qat.state_dict())
    freeze_observers(plain)
    plain.eval()
    t = time.perf_counter()
    quantized = QAT2Quantize()(copy.deepcopy(qat), ctx)
    convert_s = time.perf_counter() - t
    with torch.no_grad():
        rows.append(
            (
                "QAT eval forward, plain fake-quant (integer_exact: off)",
                timed(lambda: plain(x), ARGS.reps),
            )
        )
        rows.append(("QAT eval forward, integer-exact (default)", timed(lambda: qat(x), ARGS.reps)))
        rows.append(
            (
                f"integer model forward (QAT2Quantize {convert_s:.1f} s)",
                timed(lambda: quantized(x), ARGS.reps),
            )
        )
        agreement = {}
        for label, model in (("integer-exact", qat), ("plain fake-quant", plain)):
            within = total = exact = 0
            for a, b, s in zip(model(x), quantized(x), quantized.output_scales()):
                d = (a.double() - b.double()).abs() / s.double().reshape(1, -1, 1, 1)
                within += int((d <= 1.001).sum())
                exact += int((d == 0).sum())
                total += d.numel()
            agreement[label] = (within / total, exact / total)

    base = rows[1][1]
    for label, sec in rows:
        print(f"{label:<66} {sec * 1000:10.1f} ms/img   {sec / base:5.2f}x float train step")
    for label, (within, exact) in agreement.items():
        print(
            f"QAT ({label}) vs integer model: {100 * within:.3f}% of output elements within "
            f"one step, {100 * exact:.3f}% equal"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
