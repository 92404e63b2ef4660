"""The model checker: can a float deploy model compile for NASH-E? (``fcos check``)

The model is exported with ``torch.export`` (eval mode) and every ATen op of the graph is
compared with the target's operator set and limits (:mod:`fcos_plugin_nash_e.target`). Each
problem names the layer by its ``nn.Module`` qualified name (``node.meta["nn_module_stack"]``),
the op and the reason, so a user can fix the model before training it.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from fcos_core.compile.backend import CheckIssue
from fcos_core.graph_names import BN_OPS, CONV_OPS, TRANSPARENT_OPS, layer_name, op_name
from fcos_plugin_nash_e.target import LIMITS

_CONV = CONV_OPS
_BN = BN_OPS
#: ops that move no data on the target (graph plumbing, eval-mode dropout)
_TRANSPARENT = TRANSPARENT_OPS
_HINTS = {
    "sigmoid": "the FCOS decoder applies sigmoid on the host; return logits",
    "gelu": "use ReLU (activation: relu)",
    "silu": "use ReLU (activation: relu)",
    "hardswish": "use ReLU (activation: relu)",
    "layer_norm": "use BatchNorm after a conv (folded into the conv)",
    "group_norm": "use BatchNorm after a conv (folded into the conv)",
    "mul": "element-wise multiplication is not supported (e.g. bifpn_fa weights or SE blocks: "
    "use fpn_name bifpn_sum and use_se_block false)",
}


def _pair(v: Any, default: tuple[int, int]) -> tuple[int, int]:
    if v is None or v == []:
        return default
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    shape = getattr(val, "shape", None)
    try:
        return tuple(int(d) for d in shape) if shape is not None else None
    except (TypeError, ValueError):  # symbolic sizes
        return None


def _check_conv(node: Any, issue) -> None:
    a = list(node.args) + [None] * 9
    name = op_name(node)
    weight = _shape(a[1])
    if name == "conv2d":
        stride, padding, dilation, groups = a[3], a[4], a[5], a[6] or 1
        transposed = False
    else:
        stride, padding, dilation, transposed, groups = a[3], a[4], a[5], a[6], a[8] or 1
    if transposed:
        issue("transposed convolution is not supported; use nearest upsample + conv")
    if weight is None or len(weight) != 4:
        issue("only 2-D convolutions are supported")
        return
    o, ipg, kh, kw = weight
    stride = _pair(stride, (1, 1))
    dil = _pair(dilation, (1, 1))
    if isinstance(padding, str):
        pad = (kh // 2, kw // 2) if padding == "same" else (0, 0)
    else:
        pad = _pair(padding, (0, 0))
    if dil != (1, 1):
        issue(
            f"dilation {dil} is not supported (only 1); the conv engine has no dilated line buffers"
        )
    if not (kh <= LIMITS.max_kernel and kw <= LIMITS.max_kernel):
        issue(f"kernel {kh}x{kw} exceeds the {LIMITS.max_kernel}x{LIMITS.max_kernel} limit")
    if any(s not in LIMITS.conv_strides for s in stride):
        issue(f"stride {stride} is not supported (each of {LIMITS.conv_strides})")
    if pad[0] >= kh or pad[1] >= kw or max(pad) > LIMITS.max_padding:
        issue(f"padding {pad} must be below the kernel size and at most {LIMITS.max_padding}")
    cin = ipg * int(groups)
    if max(cin, o) > LIMITS.max_channels:
        issue(f"{cin} input / {o} output channels exceed the limit of {LIMITS.max_channels}")


def check_float_model(model: Any, example_inputs: Mapping[str, Any]) -> list[CheckIssue]:
    """Every reason the float deploy ``model`` cannot compile (empty list: it can)."""
    import torch

    issues: list[CheckIssue] = []
    args = []
    for value in example_inputs.values():
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            value = torch.zeros(*value)
        args.append(value)
    for v in args:
        shape = tuple(v.shape)
        if len(shape) == 4 and (shape[0] > LIMITS.max_batch or max(shape[2:]) > LIMITS.max_spatial):
            issues.append(
                CheckIssue(
                    "<input>",
                    "placeholder",
                    f"input shape {list(shape)}: batch must be <= "
                    f"{LIMITS.max_batch} and sizes <= {LIMITS.max_spatial}",
                )
            )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(model, tuple(args), strict=False)
    except Exception as exc:  # noqa: BLE001 - any export failure is a check result
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return [
            *issues,
            CheckIssue(
                "<model>",
                "torch.export",
                f"the model cannot be exported: {type(exc).__name__}: {first_line}",
            ),
        ]
    finally:
        model.train(was_training)
    graph = ep.graph
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            continue
        name = op_name(node)
        layer = layer_name(node)

        def issue(reason: str, _layer: str = layer, _name: str = name) -> None:
            issues.append(CheckIssue(_layer, _name, reason))

        shape = _shape(node)
        if (
            shape is not None
            and len(shape) == 4
            and name not in _TRANSPARENT
            and shape[1] > LIMITS.max_channels
        ):
            issue(f"feature map has {shape[1]} channels, over the limit of {LIMITS.max_channels}")
        if name in _CONV:
            _check_conv(node, issue)
        elif name in _BN:
            src = node.args[0]
            if not (
                hasattr(src, "op")
                and src.op == "call_function"
                and op_name(src) in _CONV
                and len(src.users) == 1
            ):
                issue(
                    "BatchNorm must directly follow a conv (it is folded into the conv's "
                    "weights); a standalone BatchNorm has no integer op"
                )
        elif name in ("relu", "getitem") or name in _TRANSPARENT:
            pass
        elif name == "add":
            other = node.args[1] if len(node.args) > 1 else None
            alpha = node.kwargs.get("alpha", 1)
            if not hasattr(other, "op"):
                issue("adding a constant is not supported (fold it into a conv bias)")
            elif _shape(node.args[0]) != _shape(other):
                issue(
                    f"add of shapes {_shape(node.args[0])} and {_shape(other)}: "
                    "broadcasting is not supported"
                )
            elif alpha != 1:
                issue("add with alpha != 1 is not supported")
        elif name in ("max_pool2d", "max_pool2d_with_indices"):
            a = list(node.args) + [None] * 6
            k = _pair(a[1], (1, 1))
            s = _pair(a[2], k)
            p = _pair(a[3], (0, 0))
            d = _pair(a[4], (1, 1))
            if any(v not in LIMITS.pool_kernels for v in k) or any(
                v not in LIMITS.pool_strides for v in s
            ):
                issue(
                    f"max-pool kernel {k} / stride {s} not supported (kernels "
                    f"{LIMITS.pool_kernels}, strides {LIMITS.pool_strides})"
                )
            if d != (1, 1):
                issue("dilated max-pool is not supported")
            if p[0] > k[0] // 2 or p[1] > k[1] // 2:
                issue(f"max-pool padding {p} above half the kernel")
        elif name == "upsample_nearest2d":
            src, out = _shape(node.args[0]), shape
            ok = (
                src is not None
                and out is not None
                and out[2] % src[2] == 0
                and out[3] % src[3] == 0
                and out[2] // src[2] == out[3] // src[3]
                and out[2] // src[2] in LIMITS.upsample_factors
            )
            if not ok:
                issue(
                    f"nearest upsampling must be by an integer factor in "
                    f"{LIMITS.upsample_factors} (got {src} -> {out})"
                )
        elif name in ("max", "amax"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if dims not in ([1], [-3]):
                issue(
                    "max is supported only over the channel axis (the compile filter's "
                    "max class logit)"
                )
        elif name == "cat":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -3):
                issue("concatenation is supported along channels (dim 1) only")
        else:
            hint = _HINTS.get(name)
            issue(
                f"{name} is not in the NASH-E operator set (conv2d, batch_norm folded into "
                "conv, relu, add, max_pool2d, upsample_nearest2d x2, cat on channels, channel "
                "max)" + (f"; {hint}" if hint else "")
            )
    return issues
