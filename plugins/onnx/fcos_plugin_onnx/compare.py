"""``fcos onnx-compare CONFIG``: ONNX Runtime's detections vs the int_infer model's, on the
validation set of a config whose pipeline has run (the QAT checkpoint exists).

The int_infer model is built exactly as the config's ``int_infer_predictor`` builds it (its
``model`` through its ``model_convert_pipeline``, with the quantization rules of the config's
``march``). It is exported with the ``onnx`` backend; then every validation batch goes through
both: the fcos integer model (``model(batch)``, as the predictor runs it) and the same detector
whose body is ONNX Runtime's session (same decoding, same metric). Printed: both metric sets,
the AP difference, and the integer-code agreement of the raw head outputs over the whole set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError


def _ort_body(program: Any) -> Any:
    """An ``nn.Module`` standing in for the detector's body: runs ONNX Runtime."""
    import torch

    class OrtBody(torch.nn.Module):
        last: tuple = ()  # the raw outputs of the latest call (for the code agreement)

        def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self.last = program.run({"img": img})
            return tuple(torch.from_numpy(o) for o in self.last)

    return OrtBody()


def evaluate_onnx_vs_int_infer(
    cfg_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    host: Any = None,
    max_batches: int | None = None,
    threads: int | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ONNX Runtime and the int_infer model on the config's validation loader(s).

    Args:
        cfg_path: the pipeline config (e.g. configs/fcos_b0_demo.yaml) after a pipeline run.
        overrides: ``key.path=value`` overrides, as on the command line.
        host: a plugin host (default: every installed plugin).
        max_batches: stop after this many batches per loader (None: all).
        threads: ORT intra-op threads (None: OMP_NUM_THREADS or the usable cores).
        out_dir: where the ONNX file goes (None: a temporary folder, removed afterwards).
        log: receives one line per result.

    Returns:
        ``{"int_infer": metrics, "onnx": metrics, "mAP_difference": onnx - int_infer,
        "agreement": code agreement of the head outputs, "images": n, "onnx_report": ...}``.
    """
    import torch

    from fcos_core.build import build
    from fcos_core.compile.agreement import AgreementTally
    from fcos_core.config import load_config
    from fcos_core.engine.context import RunContext
    from fcos_core.plugins import load_host
    from fcos_plugin_onnx.backend import OnnxBackend

    host = host if host is not None else load_host()
    cfg = load_config(str(cfg_path), host, list(overrides))
    node = cfg.node("int_infer_predictor")
    if node is None:
        raise FcosUserError(
            f"{cfg_path}: the config has no int_infer_predictor block",
            hint="onnx-compare evaluates the int_infer_predictor's model and "
            "data on the validation set; add that block",
        )
    kw = node.kwargs
    # the rules the int_infer model was quantized with: those of the config's march
    backend = cfg.compile_backend.load()() if cfg.compile_backend is not None else None
    ctx = RunContext(
        stage="int_infer",
        ckpt_dir=Path(cfg.data["ckpt_dir"]),
        example_inputs=cfg.data.get("deploy_inputs") or {"img": [1, 3, 512, 512]},
        backend=backend,
        seed=cfg.data.get("seed"),
    )
    model = build(kw["model"])
    pipeline = build(kw.get("model_convert_pipeline"))
    if pipeline is not None:
        model = pipeline(model, ctx.convert_context("cpu"))
    model = model.eval()
    body = getattr(model, "body", None)
    if body is None or not hasattr(model, "post_process"):
        raise FcosUserError(
            "onnx-compare needs an FCOS-style detector (body + post_process)",
            hint="use the int_infer_predictor of an FCOS config",
        )
    loaders = build(kw["data_loader"])
    loaders = loaders if isinstance(loaders, list) else [loaders]
    metric_node = kw.get("metrics")
    if metric_node is None:
        raise FcosUserError(
            "int_infer_predictor has no metrics block",
            hint="add metrics: {type: COCODetectionMetric, ann_file: ...}",
        )
    metric_int, metric_ort = build(metric_node), build(metric_node)  # two fresh instances
    for m in (metric_int, metric_ort):
        m.reset()

    captured: list[Any] = []
    hook = body.register_forward_hook(lambda _m, _i, out: captured.append(out))
    tally: AgreementTally | None = None
    tmp = None
    program = None
    report: dict[str, Any] = {}
    n_images = 0
    try:
        for loader in loaders:
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                img = batch["img"]
                if program is None:  # export at the validation input size
                    if out_dir is None:
                        tmp = tempfile.TemporaryDirectory(prefix="fcos_onnx_compare_")
                    where = Path(out_dir or tmp.name)  # type: ignore[union-attr]
                    onnx_backend = OnnxBackend(threads=threads)
                    result = onnx_backend.compile(
                        model,
                        {"img": img[:1]},
                        {
                            "out_dir": str(where),
                            "name": "onnx_compare",
                            "latency_runs": 20,
                            "threads": threads,
                            "agreement_check": False,
                        },
                        where,
                    )
                    report = result.report
                    program = onnx_backend.load(result.artifact)
                    tally = AgreementTally(program.meta["outputs"])
                    ort_body = _ort_body(program)
                captured.clear()
                with torch.no_grad():
                    dets_int = model(batch)
                    int_outs = captured[-1]
                    model.body = ort_body
                    try:
                        dets_ort = model(batch)
                    finally:
                        model.body = body
                assert tally is not None  # made with the program, above
                tally.add(int_outs, ort_body.last)
                metric_int.update(batch, dets_int)
                metric_ort.update(batch, dets_ort)
                n_images += int(img.shape[0])
    finally:
        hook.remove()
        if tmp is not None:
            tmp.cleanup()
    if n_images == 0:
        raise FcosUserError("the validation loader gave no batches", hint="check the val data")
    res_int, res_ort = metric_int.compute(), metric_ort.compute()
    out = {
        "int_infer": res_int,
        "onnx": res_ort,
        "mAP_difference": float(res_ort["mAP"]) - float(res_int["mAP"]),
        "agreement": _totals(tally.result()) if tally is not None else {},
        "images": n_images,
        "onnx_report": {
            k: report.get(k)
            for k in (
                "artifact_bytes",
                "nodes",
                "requantization",
                "ort_fused_int8_convs",
                "ort_integer_convs",
                "latency",
            )
        },
    }
    log(f"images: {n_images}")
    log(f"int_infer mAP: {float(res_int['mAP']):.4f}  AP50: {float(res_int.get('AP50', 0)):.4f}")
    log(f"onnx      mAP: {float(res_ort['mAP']):.4f}  AP50: {float(res_ort.get('AP50', 0)):.4f}")
    log(f"difference (onnx - int_infer): {out['mAP_difference'] * 100:+.3f} AP points")
    agr = out["agreement"]
    log(
        f"head outputs: {agr['within_0']:.4%} equal, {agr['within_1']:.4%} within 1 step, "
        f"{agr['within_2']:.4%} within 2 steps, max {agr['max_steps']} steps"
    )
    lat = report.get("latency")
    if lat:
        log(
            f"ORT latency (batch 1, {lat['threads']} thread(s)): mean {lat['mean_ms']:.2f} ms, "
            f"p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms"
        )
    return out


def compare_command(args: argparse.Namespace, host: Any) -> int:
    """Body of ``fcos onnx-compare``."""
    lines: list[str] = []
    result = evaluate_onnx_vs_int_infer(
        args.config,
        args.overrides,
        host=host,
        max_batches=args.max_batches,
        threads=args.threads,
        out_dir=args.out_dir,
        log=(lines.append if args.json else print),
    )
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True, default=float))
    return 0


def _totals(agreement: dict[str, Any]) -> dict[str, Any]:
    """The overall figures of an agreement result (the per-output list is left out)."""
    return {
        k: agreement[k]
        for k in ("elements", "within_0", "within_1", "within_2", "max_steps", "worst_output")
    }
