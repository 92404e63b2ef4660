"""Measure how closely the integer model reproduces the QAT (fake-quant) model on real data.

    python tools/quant_agreement.py configs/fcos_b0_demo.yaml [--max-batches N]

Builds the models of ``qat_predictor`` (Float2QAT + the QAT checkpoint) and
``int_infer_predictor`` (the same + QAT2Quantize), runs both over that predictor's data loader
and reports, per head output and overall, the share of elements that differ by at most one
output quantization step (the acceptance bar is 99.9%). Run it after the qat stage.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fcos_core.build import build
from fcos_core.config import load_config
from fcos_core.convert_context import ConvertContext
from fcos_core.engine.modes import set_mode
from fcos_core.plugins import load_host


def _model(cfg, key: str, ctx: ConvertContext):
    node = cfg.node(key)
    if node is None:
        sys.exit(f"the config has no {key} block")
    model = build(node.kwargs["model"])
    pipeline = build(node.kwargs.get("model_convert_pipeline"))
    return set_mode(pipeline(model, ctx) if pipeline is not None else model, False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--max-batches", type=int, default=None)
    args = ap.parse_args()
    cfg = load_config(args.config, load_host(), args.overrides)
    backend = cfg.compile_backend.load()() if cfg.compile_backend is not None else None
    shapes = {k: tuple(v) for k, v in (cfg.data.get("deploy_inputs") or {}).items()}
    ctx = ConvertContext(example_inputs=shapes, backend=backend, device="cpu", stage="int_infer")
    qat = _model(cfg, "qat_predictor", ctx)
    quant = _model(cfg, "int_infer_predictor", ctx)
    scales = quant.body.output_scales()
    loaders = cfg.node("int_infer_predictor").kwargs["data_loader"]
    loader = build(loaders[0] if isinstance(loaders, list) else loaders)
    within = [0] * len(scales)
    total = [0] * len(scales)
    worst = 0.0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if args.max_batches is not None and i >= args.max_batches:
                break
            a, b = qat.body(batch["img"]), quant.body(batch["img"])
            for k, (x, y, s) in enumerate(zip(a, b, scales)):
                s = s.reshape(1, -1, 1, 1) if s.numel() > 1 else s
                steps = (x.double() - y.double()).abs() / s.double()
                within[k] += int((steps <= 1.0 + 1e-6).sum())
                total[k] += steps.numel()
                worst = max(worst, float(steps.max()))
    for k, (w, t) in enumerate(zip(within, total)):
        print(f"output {k:2d}: {100.0 * w / t:9.5f}% within one step ({t} elements)")
    share = sum(within) / sum(total)
    print(
        f"all outputs: {100.0 * share:.5f}% of {sum(total)} elements within one step; "
        f"largest difference {worst:.2f} steps (bar: 99.9%)"
    )
    return 0 if share >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
