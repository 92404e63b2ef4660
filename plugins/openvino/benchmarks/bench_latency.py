"""Batch-1 latency of the demo's deploy model (EfficientNet-B0 + BiFPN + FCOS head) at 512x512
under OpenVINO and ONNX Runtime, in the same run, and the ratio.

    python plugins/openvino/benchmarks/bench_latency.py               # 512x512, 2 threads each
    python plugins/openvino/benchmarks/bench_latency.py --quick       # 128x128, few runs

Both runtimes get the same thread budget (``--threads``, default 2) and passive waiting
(``OMP_WAIT_POLICY=PASSIVE``); their calls are interleaved (ORT, OpenVINO, ORT, ...) so that a
load change on a shared machine hits both alike. The quantized model is calibrated on two
random batches: latency does not depend on the weights, and the agreement column compares each
runtime with the same integer model. Rows: each backend's ``requantization: integer`` (exact)
and ``float`` (the runtimes' own int8 kernels).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime are imported

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128x128, 5 runs")
    ap.add_argument("--size", type=int, default=512, help="input height and width")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per runtime and mode")
    ap.add_argument("--threads", type=int, default=2, help="threads of each runtime")
    ap.add_argument("--modes", default="integer,float", help="requantization modes to time")
    ap.add_argument(
        "--config",
        default=str(ROOT / "configs" / "fcos_b0_demo.yaml"),
        help="config whose deploy_model is timed",
    )
    args = ap.parse_args()
    size = 128 if args.quick else args.size
    runs = 5 if args.quick else args.runs

    import torch

    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.convert_context import ConvertContext
    from fcos_core.plugins import load_host
    from fcos_core.quantization.converters import Float2QAT, QAT2Quantize, freeze_observers
    from fcos_plugin_onnx.backend import OnnxBackend
    from fcos_plugin_openvino.backend import OpenVinoBackend

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, load_host(), [f"vars.input_size={size}"])
    torch.manual_seed(0)
    ctx = ConvertContext(example_inputs={"img": (1, 3, size, size)}, backend=OnnxBackend())
    qat = Float2QAT()(build(cfg.values["deploy_model"]).eval(), ctx)
    qat.body.train()  # a QAT model's ranges move only in training mode
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            qat(torch.rand(2, 3, size, size, generator=g) * 2 - 1)
    qat.eval()
    freeze_observers(qat)
    quant = QAT2Quantize()(qat, ctx).eval()
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1

    print(
        f"batch 1, {size}x{size}, {args.threads} thread(s) each, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}, {runs} interleaved runs per row, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other jobs share the machine)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="fcos_ov_bench_"))
    for mode in args.modes.split(","):
        progs = {}
        for label, backend in (
            ("ORT", OnnxBackend(threads=args.threads)),
            ("OpenVINO", OpenVinoBackend(threads=args.threads)),
        ):
            res = backend.compile(
                quant,
                {"img": x},
                {"latency_runs": 0, "requantization": mode},
                tmp / f"{label}_{mode}",
            )
            program = backend.load(res.artifact)
            agr = res.report["agreement"]
            progs[label] = (backend, program, agr)
        times: dict[str, list[float]] = {k: [] for k in progs}
        for i in range(runs + 3):  # 3 untimed warm-up rounds
            for label, (backend, program, _) in progs.items():
                t0 = time.perf_counter()
                backend.run(program, {"img": x})
                if i >= 3:
                    times[label].append((time.perf_counter() - t0) * 1e3)
        p50 = {k: statistics.median(v) for k, v in times.items()}
        for label, (_, _, agr) in progs.items():
            print(
                f"{mode:>7} requantization  {label:<8}  p50 {p50[label]:9.2f} ms  "
                f"codes equal {agr['within_0']:.4%}  within 1 {agr['within_1']:.4%}  "
                f"max {agr['max_steps']} steps"
            )
        print(
            f"{mode:>7} requantization  OpenVINO / ORT p50 ratio: "
            f"{p50['OpenVINO'] / p50['ORT']:.2f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
