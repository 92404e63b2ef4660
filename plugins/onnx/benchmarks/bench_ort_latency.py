"""Batch-1 latency of the seed's deploy model (EfficientNet-B0 + BiFPN + FCOSHead) on ONNX
Runtime: the QDQ export of the quantized model (uint8 and int8 activation storage), the float
export, and the fcos integer model in torch for reference.

    python plugins/onnx/benchmarks/bench_ort_latency.py             # 512x512, as the seed
    python plugins/onnx/benchmarks/bench_ort_latency.py --quick     # 128x128, few runs

The quantized model is calibrated on two random batches only: latency does not depend on the
weights, and the agreement column still compares ORT with the same integer model.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime are imported

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128x128, 5 runs")
    ap.add_argument("--size", type=int, default=512, help="input height and width")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per path")
    ap.add_argument("--threads", type=int, default=None, help="torch / ORT intra-op threads")
    ap.add_argument(
        "--config",
        default=str(ROOT / "configs" / "fcos_b0.yaml"),
        help="config whose deploy_model is timed",
    )
    args = ap.parse_args()
    size = 128 if args.quick else args.size
    runs = 5 if args.quick else args.runs

    import torch

    from fcos_core.build import build
    from fcos_core.compile.float_onnx import export_float_onnx
    from fcos_core.config import load_config
    from fcos_core.convert_context import ConvertContext
    from fcos_core.plugins import load_host
    from fcos_core.quantization.converters import Float2QAT, QAT2Quantize, freeze_observers
    from fcos_plugin_onnx.backend import OnnxBackend
    from fcos_plugin_onnx.session import default_threads, make_session, measure_latency

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    cfg = load_config(args.config, load_host(), [f"deploy_inputs.img=[1,3,{size},{size}]"])
    torch.manual_seed(0)
    float_model = build(cfg.values["deploy_model"]).eval()
    backend = OnnxBackend(threads=threads)
    ctx = ConvertContext(example_inputs={"img": (1, 3, size, size)}, backend=backend)
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
        f"ONNX Runtime latency, batch 1, {size}x{size}, {threads} thread(s), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {runs} runs"
    )
    rows: list[tuple[str, dict, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fcos_ort_bench_"))
    for requant, storage in (("integer", "uint8"), ("float", "uint8"), ("float", "int8")):
        res = backend.compile(
            quant,
            {"img": x},
            {
                "latency_runs": runs,
                "warmup_runs": 3,
                "activation_dtype": storage,
                "requantization": requant,
                "onnx_file": f"q_{requant}_{storage}.onnx",
            },
            tmp,
        )
        r = res.report
        note = (
            f"{r['ort_fused_int8_convs']} QLinearConv, {r['ort_integer_convs']} "
            f"ConvInteger, codes equal: {r['agreement']['within_0']:.4%}"
        )
        rows.append((f"ORT {requant} requantization ({storage} activations)", r["latency"], note))
    fpath = export_float_onnx(float_model, {"img": x}, tmp / "float.onnx")
    sess, _ = make_session(str(fpath), threads=threads)
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy()}
    rows.append(("ORT float", measure_latency(lambda: sess.run(None, feed), runs, 3), ""))
    with torch.no_grad():
        rows.append(
            (
                "fcos integer model (torch, reference)",
                measure_latency(lambda: quant(x), max(2, runs // 5), 1),
                "float64 convs",
            )
        )
        rows.append(("float eager (torch)", measure_latency(lambda: float_model(x), runs, 3), ""))
    width = max(len(r[0]) for r in rows)
    for label, lat, note in rows:
        print(
            f"{label:<{width}}  mean {lat['mean_ms']:8.2f} ms  p50 {lat['p50_ms']:8.2f} ms  "
            f"p90 {lat['p90_ms']:8.2f} ms  {note}"
        )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
