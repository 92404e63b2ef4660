"""Quantization report: per-layer SQNR against float, scales, ranges, the worst layers.

For every quantization point (each activation fake-quant of a calibration/QAT model, each
value of an integer model) the report compares the quantized value with the float value of
the same tensor:

* ``sqnr_db``: ``10 log10(sum(ref^2) / sum((q - ref)^2))`` with everything upstream quantized
  too (the error that reaches this layer);
* ``local_sqnr_db``: the same for quantizing the float tensor alone with this layer's scale
  (the error this layer adds);
* ``scale``, ``dtype``, the float ``range`` seen and ``clipped``: the fraction of float values
  outside the representable range.

The float reference is a float model (exported and BN-folded like the quantized one, so its
node names match), or, when None is given, the reference the converters kept: the fake-quant
graph with every fake-quant switched off (same weights, no quantization).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from fcos_core.graph_names import module_path
from fcos_core.quantization.converters import body_of, float_reference, quant_info
from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.integer_exact import exact_node_of
from fcos_core.quantization.integer_model import IntegerModel
from fcos_core.quantization.prepare import PreparedBody

_QMAX = {"int8": 127, "int16": 32767, "int32": 2**31 - 1}
_DTYPE_NAME = {torch.int8: "int8", torch.int16: "int16"}


class _Capture(fx.Interpreter):
    """Runs a graph and keeps every tensor value by node name."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.values[n.name] = out.detach()
        return out


def _as_batches(inputs: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return list(inputs)


def _float_values(
    float_model: nn.Module | None, quant_body: nn.Module, x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Float values by node name, and the float outputs."""
    from fcos_core.quantization.graph_passes import fold_conv_bn, remove_dropout
    from fcos_core.quantization.prepare import export_float, float_view

    if float_model is not None and not isinstance(body_of(float_model), PreparedBody):
        gm = export_float(body_of(float_model), tuple(x.shape))
        remove_dropout(gm)
        fold_conv_bn(gm)
        cap = _Capture(gm)
        outs = cap.run(x)
        return cap.values, tuple(outs)
    # a prepared model (the given one, e.g. the calibrated model before its bias correction,
    # or the quantized model itself) with its fake-quants off; else the converters' reference
    source = quant_body if float_model is None else body_of(float_model)
    ref = source.graph_module if isinstance(source, PreparedBody) else float_reference(source)
    if not isinstance(ref, fx.GraphModule):
        raise ValueError(
            "no float reference: pass float_model, or convert with keep_reference=True"
        )
    cap = _Capture(ref)
    with float_view(ref), torch.no_grad():
        outs = cap.run(x)
    return cap.values, tuple(outs)


def _quant_points(
    body: nn.Module, x: torch.Tensor
) -> tuple[list[dict[str, Any]], tuple[torch.Tensor, ...]]:
    """[{name, source, value (float), scale, dtype}] and the (float) outputs."""
    points: list[dict[str, Any]] = []
    if isinstance(body, IntegerModel):
        from fcos_core.quantization import int_ops

        env = body.run_all(x)
        for op in body.program:
            scale = body.ops[op.name].scale
            points.append(
                {
                    "name": op.name,
                    "source": op.attrs.get("source", op.name),
                    "value": int_ops.dequantize(env[op.name], scale),
                    "scale": scale,
                    "dtype": op.dtype,
                    "kind": op.kind,
                }
            )
        outs = tuple(int_ops.dequantize(env[n], body.ops[n].scale) for n in body.outputs)
        return points, outs
    if not isinstance(body, PreparedBody):
        raise ValueError(
            "quant_model: expected a model converted by Float2Calibration, "
            "Float2QAT or QAT2Quantize"
        )
    body = body.graph_module
    cap = _Capture(body)
    observers = [(fq, int(fq.observer_enabled[0])) for _, fq in _fqs(body)]
    try:
        for fq, _ in observers:
            fq.enable_observer(False)  # a report must not move the ranges
        with torch.no_grad():
            outs = cap.run(x)
    finally:
        for fq, o in observers:
            fq.enable_observer(bool(o))
    for node in body.graph.nodes:
        if node.op != "call_module":
            continue
        fq = body.get_submodule(str(node.target))
        if not isinstance(fq, FcosFakeQuantize) or getattr(fq, "is_weight", False):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op == "get_attr":
            continue
        # the value consumers see: the integer-exact node's where the graph has one
        exact = exact_node_of(node)
        value_name = exact.name if exact is not None else node.name
        if value_name not in cap.values:
            continue
        points.append(
            {
                "name": node.name,
                "source": src.name,
                "module": module_path(src),
                "value": cap.values[value_name],
                "scale": fq.scale.detach().clone(),
                "dtype": _DTYPE_NAME[fq.dtype],
                "kind": src.target.__name__ if callable(src.target) else str(src.op),
            }
        )
    return points, tuple(outs)


def _fqs(gm: nn.Module) -> Iterable[tuple[str, FcosFakeQuantize]]:
    for name, m in gm.named_modules():
        if isinstance(m, FcosFakeQuantize):
            yield name, m


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _local_quant(ref: torch.Tensor, scale: torch.Tensor, dtype: str) -> torch.Tensor:
    qmax = _QMAX[dtype]
    s = scale.double()
    if s.numel() > 1:
        s = s.reshape(1, -1, 1, 1)
    return (torch.round(ref.double() / s).clamp(-qmax - 1, qmax) * s).float()


def quant_report(
    float_model: nn.Module | None,
    quant_model: nn.Module,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    worst: int = 10,
) -> dict[str, Any]:
    """Compare a quantized model with float on ``inputs`` (one image batch or several).

    Args:
        float_model: the float model (or its body); a prepared (calibration/QAT) model, whose
            graph then runs with its fake-quants off; None uses the reference the converters
            kept (fake-quant off), see the module docstring.
        quant_model: a model (or body) after Float2Calibration, Float2QAT or QAT2Quantize.
        inputs: image batches ``[B, C, H, W]`` at the size the model was converted for.
        worst: how many layers to list as losing most.
    Returns:
        ``{"stage", "layers": [...], "outputs": [...], "worst": [...]}`` (JSON-serialisable).
    """
    qbody = body_of(quant_model)
    acc: dict[str, dict[str, Any]] = {}
    out_acc: list[dict[str, float]] = []
    for x in _as_batches(inputs):
        ref_values, ref_outs = _float_values(float_model, qbody, x)
        points, q_outs = _quant_points(qbody, x)
        for p in points:
            ref = ref_values.get(p["source"])
            if ref is None or ref.shape != p["value"].shape:
                continue
            rec = acc.setdefault(
                p["name"],
                {
                    "name": p["name"],
                    "source": p["source"],
                    "module": p.get("module", ""),
                    "kind": p["kind"],
                    "dtype": p["dtype"],
                    "signal": 0.0,
                    "noise": 0.0,
                    "local_noise": 0.0,
                    "clipped": 0,
                    "numel": 0,
                    "min": math.inf,
                    "max": -math.inf,
                },
            )
            scale = p["scale"]
            rec["scale"] = (
                float(scale) if scale.numel() == 1 else [float(v) for v in scale.reshape(-1)]
            )
            rec["signal"] += float((ref.double() ** 2).sum())
            rec["noise"] += float(((p["value"].double() - ref.double()) ** 2).sum())
            local = _local_quant(ref, scale, p["dtype"])
            rec["local_noise"] += float(((local.double() - ref.double()) ** 2).sum())
            s = scale.double().reshape(1, -1, 1, 1) if scale.numel() > 1 else scale.double()
            qmax = _QMAX[p["dtype"]]
            r64 = ref.double()
            rec["clipped"] += int(((r64 > (qmax + 0.5) * s) | (r64 < -(qmax + 1.5) * s)).sum())
            rec["numel"] += ref.numel()
            rec["min"] = min(rec["min"], float(ref.min()))
            rec["max"] = max(rec["max"], float(ref.max()))
        for i, (r, q) in enumerate(zip(ref_outs, q_outs)):
            r, q = r.detach(), q.detach()
            if len(out_acc) <= i:
                out_acc.append({"index": i, "signal": 0.0, "noise": 0.0})
            out_acc[i]["signal"] += float((r.double() ** 2).sum())
            out_acc[i]["noise"] += float(((q.double() - r.double()) ** 2).sum())
    layers = []
    for rec in acc.values():
        layers.append(
            {
                "name": rec["name"],
                "source": rec["source"],
                "module": rec["module"],
                "kind": rec["kind"],
                "dtype": rec["dtype"],
                "scale": rec["scale"],
                "range": [rec["min"], rec["max"]],
                "sqnr_db": _sqnr(rec["signal"], rec["noise"]),
                "local_sqnr_db": _sqnr(rec["signal"], rec["local_noise"]),
                "clipped": rec["clipped"] / max(rec["numel"], 1),
            }
        )
    outputs = [{"index": o["index"], "sqnr_db": _sqnr(o["signal"], o["noise"])} for o in out_acc]
    ranked = sorted(layers, key=lambda r: r["local_sqnr_db"])
    info = quant_info(quant_model) or {}
    stage = "quantized" if isinstance(qbody, IntegerModel) else "fake_quant"
    return {
        "stage": stage,
        "output_dtype": info.get("output_dtype"),
        "layers": layers,
        "outputs": outputs,
        "worst": [r["name"] for r in ranked[:worst]],
    }


def _fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) and v > 0 else ("-inf" if math.isinf(v) else f"{v:6.2f}")


def format_report(report: dict[str, Any]) -> str:
    """A readable table: one line per layer, then the outputs and the worst layers."""
    lines = [
        f"quantization report ({report['stage']})",
        (
            f"{'layer (module)':<44} {'kind':<16} {'dtype':<6} {'scale':>12} {'min':>10} "
            f"{'max':>10} {'clip%':>7} {'SQNR':>7} {'local':>7}"
        ),
    ]
    for r in report["layers"]:
        s = r["scale"]
        scale = f"{s:12.6g}" if isinstance(s, float) else f"{'per-ch':>12}"
        label = r.get("module") or r["name"]
        label = label if len(label) <= 44 else "..." + label[-41:]  # the tail names the layer
        lines.append(
            f"{label:<44} {str(r['kind'])[:16]:<16} {r['dtype']:<6} {scale} "
            f"{r['range'][0]:10.4g} {r['range'][1]:10.4g} {100 * r['clipped']:7.3f} "
            f"{_fmt_db(r['sqnr_db']):>7} {_fmt_db(r['local_sqnr_db']):>7}"
        )
    lines.append(
        "outputs: "
        + ", ".join(f"#{o['index']} {_fmt_db(o['sqnr_db'])} dB" for o in report["outputs"])
    )
    modules = {r["name"]: r.get("module") or r["name"] for r in report["layers"]}
    lines.append(
        "losing most (local SQNR): " + ", ".join(modules.get(w, w) for w in report["worst"])
    )
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def write_quant_report(
    quant_model: nn.Module,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    run_dir: str | os.PathLike[str],
    stage: str,
    float_model: nn.Module | None = None,
) -> str:
    """Write ``quant_report_<stage>.json`` and ``quant_report_<stage>.txt`` into ``run_dir``;
    returns the JSON path."""
    report = quant_report(float_model, quant_model, inputs)
    report["stage"] = stage
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(os.fspath(run_dir), f"quant_report_{stage}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(report), f, indent=1)
    with open(path[:-5] + ".txt", "w", encoding="utf-8") as f:
        f.write(format_report(report) + "\n")
    return path
