"""``check``: which layers keep a model from becoming a QDQ ONNX model.

* A quantized deploy model (its body an ``IntegerModel``): every integer op must have an ONNX
  translation at the configured opset (:func:`fcos_plugin_onnx.qdq_export.check_program`).
* A float deploy model (``fcos check CONFIG --model``, before any training): the model is
  exported with ``torch.export`` and every ATen op is compared with what the quantization flow
  can turn into integer ops -- the quantization rules' ``supported_ops`` (conv2d, add, relu,
  max_pool2d, upsample_nearest2d, cat), BatchNorm folded into a preceding conv, and the
  channel-wise max of the compile post-process. Anything else can neither be quantized by fcos
  nor exported by this backend; the issue names the layer (``nn.Module`` path) and the op.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from fcos_core.compile.backend import CheckIssue
from fcos_core.graph_names import BN_OPS, CONV_OPS, TRANSPARENT_OPS, layer_name, op_name

_CONV = CONV_OPS
_BN = BN_OPS
#: graph plumbing that moves no data, and the getitem of multi-output ops
_TRANSPARENT = TRANSPARENT_OPS | {"getitem"}
_HINTS = {
    "sigmoid": "the FCOS decoder applies sigmoid after the model; return logits",
    "silu": "use ReLU (activation: relu)",
    "gelu": "use ReLU (activation: relu)",
    "hardswish": "use ReLU (activation: relu)",
    "mul": "element-wise products are not in the integer op set (SE blocks, bifpn_fa "
    "weights): use use_se_block: false and fpn_name: bifpn_sum",
    "mean": "global pooling is not in the integer op set",
    "layer_norm": "use BatchNorm after a conv (folded into the conv)",
    "group_norm": "use BatchNorm after a conv (folded into the conv)",
}


def check_quantized(
    records: Any,
    opset: int,
    requantization: str = "integer",
    layer_names: Mapping[str, str] | None = None,
) -> list[CheckIssue]:
    """Every integer op of ``records`` the exporter cannot express at ``opset`` with this
    ``requantization``; mixed precision (``layer_precision``): with ``integer``
    requantization a conv reads its input through ``ConvInteger``, whose operands are 8-bit,
    so a conv that reads an int16 activation (the output of a layer set to int16) is refused,
    naming that conv and the int16 layer it reads (``layer_names``: graph node -> module name,
    the quantized model's ``quant_info(...)["layer_names"]``)."""
    from fcos_plugin_onnx.qdq_export import check_program

    issues = [
        CheckIssue(layer, kind, reason) for layer, kind, reason in check_program(records, opset)
    ]
    if requantization == "integer":
        names = dict(layer_names or {})

        def layer(op: Any) -> str:
            src = op.attrs.get("source") or op.name
            return names.get(src, src)

        source = {r.op.name: layer(r.op) for r in records}
        for rec in records:
            op = rec.op
            if (
                op.kind == "conv2d"
                and op.dtype != "int32"
                and rec.input_dtypes
                and rec.input_dtypes[0] == "int16"
            ):
                src = source.get(op.inputs[0], op.inputs[0])
                issues.append(
                    CheckIssue(
                        layer(op),
                        "conv2d",
                        f"reads the int16 activation of {src} (layer_precision); "
                        "requantization 'integer' runs convs as ConvInteger, which takes 8-bit "
                        "inputs only: set compile_cfg.requantization: float (int16 convs run as "
                        "float convs, within one step of the integer model) or keep that layer "
                        "int8",
                    )
                )
    return issues


def check_float_model(
    model: Any, example_inputs: Mapping[str, Any], supported_ops: frozenset[str]
) -> list[CheckIssue]:
    """Every layer of the float deploy ``model`` with no QDQ ONNX form (empty: none)."""
    import torch

    args = []
    for value in example_inputs.values():
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            value = torch.zeros(*value)
        args.append(value)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(model, tuple(args), strict=False)
    except Exception as exc:  # noqa: BLE001 - any export failure is a check result
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return [
            CheckIssue(
                "<model>",
                "torch.export",
                f"the model cannot be exported ({type(exc).__name__}: {first}); "
                "ONNX export and quantization both start from torch.export",
            )
        ]
    finally:
        model.train(was_training)
    issues: list[CheckIssue] = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = op_name(node)
        layer = layer_name(node)
        if name in _CONV:
            if name != "conv2d" and len(node.args) > 6 and node.args[6]:
                issues.append(
                    CheckIssue(
                        layer,
                        name,
                        "transposed convolution has no fcos "
                        "integer op; use nearest upsample + conv",
                    )
                )
            continue
        if name in _BN:
            src = node.args[0]
            if not (
                getattr(src, "op", None) == "call_function"
                and op_name(src) in _CONV
                and len(src.users) == 1
            ):
                issues.append(
                    CheckIssue(
                        layer,
                        name,
                        "BatchNorm must directly follow a conv "
                        "(it is folded into the conv's weights)",
                    )
                )
            continue
        if name in _TRANSPARENT or name in supported_ops:
            if name == "add":
                other = node.args[1] if len(node.args) > 1 else None
                if not hasattr(other, "op"):
                    issues.append(
                        CheckIssue(
                            layer,
                            name,
                            "adding a constant has no integer op; fold it into a conv bias",
                        )
                    )
            continue
        if name in ("max", "amax") and _channel_reduce(node):
            continue  # FCOSMultiStrideFilter(for_compile): ReduceMax over channels
        reason = (
            f"{name} has no fcos integer op (the quantized model supports "
            f"{', '.join(sorted(supported_ops))}), so it cannot reach the QDQ ONNX model"
        )
        if name in _HINTS:
            reason += f"; {_HINTS[name]}"
        issues.append(CheckIssue(layer, name, reason))
    return issues


def _channel_reduce(node: Any) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    return dims in ([1], [-3])
