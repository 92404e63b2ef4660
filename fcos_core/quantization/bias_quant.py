"""Fake-quantization of conv biases to int32 at the accumulator scale ``s_in * s_w[c]``.

The integer conv adds ``round(b / (s_in * s_w[c]))`` to its exact accumulator. Left in float
during QAT, the bias would differ from that by up to half an accumulator unit, which for an
int16 output (whose step is close to one accumulator unit) shifts most values by a step. So
the prepared graph computes the bias exactly as the integer model will: a ``call_function``
node per conv that reads the live ``scale`` buffers of the conv's input and weight fake-quants.
The nodes are removed before ``convert_pt2e`` (the lowering applies the same formula,
:func:`fcos_core.quantization.int_ops.quantize_bias`).
"""

from __future__ import annotations

import torch
from torch import fx

from fcos_core.quantization.fake_quantize import FcosFakeQuantize

_CONV = torch.ops.aten.conv2d.default
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def fake_quantize_bias(
    bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor, enabled: torch.Tensor
) -> torch.Tensor:
    """``float32(sat_int32(round_half_even(b / (s_in * s_w))) * s_in * s_w)`` in float64,
    with a straight-through gradient to ``bias``; the float bias while the weight's
    fake-quant is off (``enabled`` is its flag: calibration observes the float model)."""
    if int(enabled[0]) == 0:
        return bias
    acc_scale = input_scale.detach().double().reshape(()) * weight_scale.detach().double()
    q = torch.round(bias.detach().double() / acc_scale).clamp(INT32_MIN, INT32_MAX)
    fq = (q * acc_scale).to(bias.dtype)
    return bias + (fq - bias).detach()


def _fake_quant_module(gm: fx.GraphModule, node: object) -> str | None:
    if (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(gm.get_submodule(str(node.target)), FcosFakeQuantize)
    ):
        return str(node.target)
    return None


def insert_bias_fake_quant(gm: fx.GraphModule) -> int:
    """Route every conv bias through :func:`fake_quantize_bias`; returns how many."""
    count = 0
    for conv in list(gm.graph.nodes):
        if conv.op != "call_function" or conv.target != _CONV or len(conv.args) < 3:
            continue
        bias = conv.args[2]
        if bias is None:
            continue
        x_fq = _fake_quant_module(gm, conv.args[0])
        w_fq = _fake_quant_module(gm, conv.args[1])
        if x_fq is None or w_fq is None:
            raise ValueError(
                f"conv {conv.name}: input and weight must be fake-quantized to quantize its bias"
            )
        with gm.graph.inserting_before(conv):
            s_in = gm.graph.get_attr(f"{x_fq}.scale")
            s_w = gm.graph.get_attr(f"{w_fq}.scale")
            flag = gm.graph.get_attr(f"{w_fq}.fake_quant_enabled")
            fq_bias = gm.graph.call_function(fake_quantize_bias, (bias, s_in, s_w, flag))
        args = list(conv.args)
        args[2] = fq_bias
        conv.args = tuple(args)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def remove_bias_fake_quant(gm: fx.GraphModule) -> None:
    """Undo :func:`insert_bias_fake_quant` (before ``convert_pt2e``)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is fake_quantize_bias:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
