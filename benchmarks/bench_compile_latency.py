"""Batch-1 latency of the FCOS-EfficientNetB0 deploy model along the deployment paths.

Paths: float PyTorch eager, float torch.compile, ONNX Runtime float, ONNX Runtime int8 (static
QDQ quantization), and the fcos NASH-E runtime (numpy integer program, opt O3). Each is
optional: a path that cannot run here is reported as unavailable with the reason. Results are
printed as milliseconds and as ratios to float eager.

    python benchmarks/bench_compile_latency.py            # 512x512, the seed's input size
    python benchmarks/bench_compile_latency.py --quick    # smoke run: 128x128, few iterations

The fcos runtime is a bit-exact reference executor (numpy im2col + float64 matmul), not a
fused-kernel engine: expect it to be several times slower than the float paths.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _models(size: int):
    """(float deploy model, quantized deploy model) from configs/fcos_b0.yaml."""
    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.engine.context import RunContext
    from fcos_core.engine.runtime import seed_everything
    from fcos_core.plugins import load_host
    from fcos_plugin_nash_e.backend import NashEBackend

    host = load_host()
    cfg = load_config(
        ROOT / "configs" / "fcos_b0.yaml", host, [f"deploy_inputs.img=[1,3,{size},{size}]"]
    )
    seed_everything(0)
    float_model = build(cfg.values["deploy_model"]).eval()
    seed_everything(0)
    quant = build(cfg.values["deploy_model"]).eval()
    pipeline = build(cfg.values["deploy_model_convert_pipeline"])
    ctx = RunContext(
        stage="compile", example_inputs={"img": (1, 3, size, size)}, backend=NashEBackend()
    )
    quant = pipeline(quant, ctx.convert_context("cpu")).eval()
    return float_model, quant


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 128x128, 2 iterations")
    ap.add_argument("--size", type=int, default=512, help="input height and width")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per path")
    ap.add_argument("--threads", type=int, default=None, help="torch / ORT intra-op threads")
    args = ap.parse_args()
    size = 128 if args.quick else args.size
    iters, warmup = (2, 1) if args.quick else (args.iters, 2)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"fcos deploy-path latency, batch 1, {size}x{size}, {threads} thread(s), median of {iters}"
    )
    try:
        float_model, quant = _models(size)
    except Exception as exc:  # noqa: BLE001 - report and stop: nothing to time
        print(f"cannot build the deploy model: {exc}")
        return 1
    x = torch.randn(1, 3, size, size)
    results: dict[str, float | str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="fcos_bench_"))

    def attempt(name: str, fn) -> None:
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - each path is optional
            results[name] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
            if os.environ.get("FCOS_BENCH_DEBUG"):
                traceback.print_exc()

    def eager():
        with torch.no_grad():
            return _time(lambda: float_model(x), iters, warmup)

    def compiled():
        cm = torch.compile(float_model)
        with torch.no_grad():
            cm(x)
            return _time(lambda: cm(x), iters, warmup)

    def onnx_export() -> Path:
        path = tmp / "float.onnx"
        if not path.exists():
            torch.onnx.export(
                float_model, (x,), str(path), dynamo=True, opset_version=21, external_data=False
            )
        return path

    def ort_session(path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def ort_float():
        sess = ort_session(onnx_export())
        name = sess.get_inputs()[0].name
        feed = {name: x.numpy()}
        return _time(lambda: sess.run(None, feed), iters, warmup)

    def ort_int8():
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        src = onnx_export()
        name = ort_session(src).get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                g = np.random.default_rng(0)
                self.items = iter(
                    [
                        {name: g.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)}
                        for _ in range(4)
                    ]
                )

            def get_next(self):
                return next(self.items, None)

        dst = tmp / "int8.onnx"
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        sess = ort_session(dst)
        feed = {name: x.numpy()}
        return _time(lambda: sess.run(None, feed), iters, warmup)

    def fcos_runtime():
        from fcos_plugin_nash_e.backend import NashEBackend

        backend = NashEBackend()
        res = backend.compile(
            quant,
            {"img": x},
            {
                "name": "bench",
                "opt": "O3",
                "hbm": str(tmp / "bench.hbm"),
                "out_dir": str(tmp),
                "input_source": ["ddr"],
            },
            tmp,
        )
        rt = backend.load(res.artifact)
        feed = {"img": x.numpy()}
        ms = _time(lambda: rt.run(feed), max(1, iters // 2), 1)
        results["  (NASH-E estimate, assumed target)"] = res.report["estimated_latency_ms"]
        return ms

    attempt("float eager", eager)
    attempt("float torch.compile", compiled)
    attempt("ONNX Runtime float", ort_float)
    attempt("ONNX Runtime int8", ort_int8)
    attempt("fcos NASH-E runtime (numpy, O3)", fcos_runtime)

    base = results.get("float eager")
    width = max(len(k) for k in results)
    for name, value in results.items():
        if isinstance(value, float):
            ratio = f"{value / base:6.2f}x eager" if isinstance(base, float) else ""
            if name.startswith("  ("):  # a model estimate, not a measurement: no ratio
                ratio = "(estimate of the assumed accelerator, not measured)"
            print(f"{name:<{width}}  {value:10.2f} ms  {ratio}")
        else:
            print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
