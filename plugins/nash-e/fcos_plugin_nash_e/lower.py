"""Lower fcos's integer model (``fcos_core.quantization``) to a NASH-E program.

Input: the quantized deploy model -- an :class:`~fcos_core.quantization.integer_model.
IntegerModel`, or a detector whose ``body`` is one (its ``post_process``, when ``for_compile``,
adds one ``reduce_max`` per class output). The records of
:func:`~fcos_core.quantization.integer_model.integer_program` map one to one onto the canonical
program (requantization and ReLU inside the conv / add that owns them, as the integer model
defines them); :func:`fcos_plugin_nash_e.optimize.optimize` then applies the opt level.

The integer model is symmetric (every zero point is 0); its formulas (docs/quantization.md) are
the kernels' formulas with zero points 0. Every op is checked against the target's limits
(:func:`check_records`); anything outside is a :class:`CompileError` naming the op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fcos_core.compile.backend import CheckIssue
from fcos_core.errors import FcosUserError
from fcos_plugin_nash_e.ir import InputInfo, Op, Program, TensorInfo, infer_shape
from fcos_plugin_nash_e.target import LIMITS


class CompileError(FcosUserError):
    """The model cannot be compiled for NASH-E; the message lists every layer and why."""

    def __init__(self, issues: Sequence[CheckIssue]) -> None:
        lines = "".join(f"\n  - {i.render()}" for i in issues)
        super().__init__(
            f"{len(issues)} layer(s) cannot be compiled for NASH-E:{lines}",
            hint="change those layers (see the nash-e README, 'Operator set and "
            "limits') or pick another march",
        )
        self.issues = list(issues)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pair(v: Any) -> tuple[int, int]:
    v = tuple(int(x) for x in v)
    return v * 2 if len(v) == 1 else v  # type: ignore[return-value]


def _check_conv(name: str, rec_op: Any, weight_shape: Sequence[int]) -> list[CheckIssue]:
    a = rec_op.attrs
    o, ipg, kh, kw = (int(v) for v in weight_shape)
    groups = int(a.get("groups", 1))
    issues = []

    def bad(reason: str) -> None:
        issues.append(CheckIssue(name, "conv2d", reason))

    if tuple(_pair(a.get("dilation", (1, 1)))) != (1, 1):
        bad(
            f"dilation {tuple(a['dilation'])} is not supported (only dilation 1); use a larger "
            "undilated kernel or a stride"
        )
    if not (1 <= kh <= LIMITS.max_kernel and 1 <= kw <= LIMITS.max_kernel):
        bad(f"kernel {kh}x{kw} exceeds the {LIMITS.max_kernel}x{LIMITS.max_kernel} limit")
    stride = _pair(a.get("stride", (1, 1)))
    if any(s not in LIMITS.conv_strides for s in stride):
        bad(f"stride {stride} not supported (each of {LIMITS.conv_strides})")
    pad = _pair(a.get("padding", (0, 0)))
    if pad[0] >= kh or pad[1] >= kw or max(pad) > LIMITS.max_padding:
        bad(f"padding {pad} must be below the kernel size and at most {LIMITS.max_padding}")
    cin = ipg * groups
    if max(cin, o) > LIMITS.max_channels:
        bad(f"{cin} input / {o} output channels exceed the limit of {LIMITS.max_channels}")
    return issues


def check_record(rec: Any, shapes: Mapping[str, tuple[int, ...]]) -> list[CheckIssue]:
    """Every target limit ``rec`` (an IntOpRecord) breaks."""
    op = rec.op
    a = op.attrs
    issues: list[CheckIssue] = []
    if op.kind == "conv2d":
        issues += _check_conv(op.name, op, tuple(rec.tensors["weight"].shape))
        if any(d not in ("int8", "int16") for d in rec.input_dtypes):
            issues.append(
                CheckIssue(
                    op.name,
                    "conv2d",
                    f"input dtype {rec.input_dtypes[0]} not supported (int8 or int16)",
                )
            )
    elif op.kind == "max_pool2d":
        k, s = _pair(a["kernel_size"]), _pair(a["stride"])
        if any(v not in LIMITS.pool_kernels for v in k) or any(
            v not in LIMITS.pool_strides for v in s
        ):
            issues.append(
                CheckIssue(
                    op.name,
                    "max_pool2d",
                    f"kernel {k} / stride {s} not "
                    f"supported (kernels {LIMITS.pool_kernels}, strides "
                    f"{LIMITS.pool_strides})",
                )
            )
        if _pair(a.get("dilation", (1, 1))) != (1, 1):
            issues.append(CheckIssue(op.name, "max_pool2d", "dilated pooling is not supported"))
        if any(p > kk // 2 for p, kk in zip(_pair(a.get("padding", (0, 0))), k)):
            issues.append(CheckIssue(op.name, "max_pool2d", "padding above half the kernel"))
    elif op.kind == "upsample_nearest2d":
        src = shapes.get(op.inputs[0])
        factor = _upsample_factor(a, src)
        if factor not in LIMITS.upsample_factors:
            got = a.get("scale_factors") or a.get("output_size")
            issues.append(
                CheckIssue(
                    op.name,
                    "upsample_nearest2d",
                    f"only integer factors {LIMITS.upsample_factors} are supported, got {got}",
                )
            )
    elif op.kind == "cat":
        if int(a.get("dim", 1)) not in (1, -3):
            issues.append(CheckIssue(op.name, "cat", "only channel concatenation (dim 1)"))
    elif op.kind not in ("quantize", "add", "requantize", "relu"):
        issues.append(CheckIssue(op.name, op.kind, "not in the NASH-E op set"))
    return issues


def _upsample_factor(a: Mapping[str, Any], src: tuple[int, ...] | None) -> int | None:
    if a.get("scale_factors"):
        fh, fw = (float(f) for f in a["scale_factors"])
        return int(fh) if fh == fw and fh == int(fh) else None
    if a.get("output_size") and src is not None:
        oh, ow = (int(v) for v in a["output_size"])
        if oh % src[2] == 0 and ow % src[3] == 0 and oh // src[2] == ow // src[3]:
            return oh // src[2]
    return None


def pool_padding(a: Mapping[str, Any], h: int, w: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding equal to torch's max_pool2d, ceil_mode included."""
    k, s, p = _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a.get("padding", (0, 0)))
    pads = []
    for size, kk, ss, pp in ((h, k[0], s[0], p[0]), (w, k[1], s[1], p[1])):
        span = size + 2 * pp - kk
        if a.get("ceil_mode"):
            out = -(-span // ss) + 1
            if (out - 1) * ss >= size + pp:  # torch: the last window must start inside
                out -= 1
        else:
            out = span // ss + 1
        pads.append((pp, (out - 1) * ss + kk - size - pp))
    (t, b), (left, r) = pads
    return (t, left, max(b, 0), max(r, 0))


def lower(
    model: Any,
    input_shapes: Mapping[str, Sequence[int]],
    input_sources: Sequence[str],
    name: str = "model",
) -> Program:
    """The canonical program of a quantized deploy model (see the module docstring)."""
    from fcos_core.quantization.find_integer import require_integer_model
    from fcos_core.quantization.integer_model import integer_program

    int_model, post = require_integer_model(model)
    records = integer_program(int_model)
    if len(input_shapes) != 1:
        raise FcosUserError(
            f"the integer model takes one image input, got inputs {list(input_shapes)}",
            hint="deploy_inputs: {img: [1, 3, H, W]}",
        )
    in_name, in_shape = next(iter(input_shapes.items()))
    in_shape = tuple(int(v) for v in in_shape)
    if len(in_shape) != 4:
        raise FcosUserError(f"input {in_name!r}: expected [B, C, H, W], got {list(in_shape)}")
    in_shape = (1, *in_shape[1:])  # a program processes one frame
    source = input_sources[0] if input_sources else "ddr"
    if len(input_sources) > 1:
        raise FcosUserError(
            f"input_source lists {len(input_sources)} sources for a model with one input",
            hint="input_source: [pyramid] or [ddr]",
        )

    tensors: dict[str, TensorInfo] = {in_name: TensorInfo(in_name, in_shape, "float32", 1.0, 0)}
    alias = {"img": in_name}
    shapes = {in_name: in_shape, "img": in_shape}
    ops: list[Op] = []
    inputs: list[InputInfo] = []
    issues: list[CheckIssue] = []
    per_channel: dict[str, np.ndarray] = {}  # int32 outputs: their per-channel float64 scales

    def emit(op: Op, dtype: str, scale: float) -> None:
        ins = [tensors[t] for t in op.inputs]
        shape = infer_shape(op, ins)
        tensors[op.outputs[0]] = TensorInfo(op.outputs[0], tuple(shape), dtype, scale, 0)
        shapes[op.outputs[0]] = tuple(shape)
        ops.append(op)

    for rec in records:
        op = rec.op
        t = rec.tensors
        issues += check_record(rec, shapes)
        if issues:
            continue
        ins = [alias.get(i, i) for i in op.inputs]
        scale = float(t["scale"].double().item()) if t["scale"].numel() == 1 else 1.0
        out = [op.name]
        if op.kind == "quantize":
            if source == "pyramid":
                from fcos_plugin_nash_e.runtime import check_pyramid_input

                why = check_pyramid_input(TensorInfo(op.name, in_shape, op.dtype, scale, 0))
                if why:
                    issues.append(CheckIssue(op.name, "quantize", why))
                    continue
            emit(Op("quantize", op.name, ins, out), op.dtype, scale)
            inputs.append(InputInfo(in_name, op.name, source, in_shape))
        elif op.kind == "conv2d":
            w = _np(t["weight"])
            bias = (
                _np(t["bias"]).astype(np.int32) if "bias" in t else np.zeros(w.shape[0], np.int32)
            )
            if op.dtype == "int32":
                mult, shift = np.ones(1, np.int32), np.zeros(1, np.int8)
            else:
                mult, shift = _requant_params(op.name, t)
            pad = _pair(op.attrs["padding"])
            emit(
                Op(
                    "conv2d",
                    op.name,
                    ins,
                    out,
                    {
                        "stride": list(_pair(op.attrs["stride"])),
                        "padding": [pad[0], pad[1], pad[0], pad[1]],
                        "groups": int(op.attrs["groups"]),
                        "relu": bool(op.attrs.get("relu")),
                        "requant": op.dtype != "int32",
                    },
                    {"weight": w.astype(np.int8), "bias": bias, "multiplier": mult, "shift": shift},
                ),
                op.dtype,
                scale,
            )
            if op.dtype == "int32":
                tensors[op.name].scale = 1.0
                per_channel[op.name] = _np(t["scale"]).astype(np.float64).reshape(-1)
        elif op.kind == "add":
            ma, mb, n = (int(t[k].item()) for k in ("multiplier_a", "multiplier_b", "shift"))
            for v, what in ((ma, "multiplier_a"), (mb, "multiplier_b")):
                if not -(2**31) <= v < 2**31:
                    issues.append(CheckIssue(op.name, "add", f"{what} {v} does not fit int32"))
            if issues:
                continue
            emit(
                Op(
                    "add",
                    op.name,
                    ins,
                    out,
                    {
                        "a_multiplier": ma,
                        "b_multiplier": mb,
                        "shift": n,
                        "relu": bool(op.attrs.get("relu")),
                    },
                ),
                op.dtype,
                scale,
            )
        elif op.kind == "requantize":
            mult, shift = _requant_params(op.name, t)
            emit(
                Op("requant", op.name, ins, out, {}, {"multiplier": mult, "shift": shift}),
                op.dtype,
                scale,
            )
        elif op.kind == "relu":
            emit(Op("relu", op.name, ins, out), op.dtype, scale)
        elif op.kind == "max_pool2d":
            _, _, h, w_ = shapes[ins[0]]
            emit(
                Op(
                    "maxpool2d",
                    op.name,
                    ins,
                    out,
                    {
                        "kernel": list(_pair(op.attrs["kernel_size"])),
                        "stride": list(_pair(op.attrs["stride"])),
                        "padding": list(pool_padding(op.attrs, h, w_)),
                    },
                ),
                op.dtype,
                scale,
            )
        elif op.kind == "upsample_nearest2d":
            factor = _upsample_factor(op.attrs, shapes[ins[0]])
            emit(
                Op("upsample_nearest2d", op.name, ins, out, {"factor": int(factor or 0)}),
                op.dtype,
                scale,
            )
        elif op.kind == "cat":
            emit(Op("concat", op.name, ins, out), op.dtype, scale)
    if issues:
        raise CompileError(issues)

    outputs = list(int_model.outputs)
    if post is not None:  # the compile filter's per-position max class logit, on the codes
        s = len(post.strides)
        for k in range(s):
            src = outputs[k]
            emit(
                Op("reduce_max", f"post_process.max_logit_{k}", [src], [src + ".max"]),
                tensors[src].dtype,
                tensors[src].scale,
            )
            if src in per_channel:
                raise CompileError(
                    [
                        CheckIssue(
                            src,
                            "reduce_max",
                            "the max over classes of an "
                            "int32 output with per-channel scales is not "
                            "exact; use int8_output or int16_output",
                        )
                    ]
                )
        outputs = outputs + [o + ".max" for o in outputs[:s]]
    final = []
    for src in outputs:
        if int_model.dequant_output:
            deq = Op("dequantize", src + ".dequantize", [src], [src + ".float"])
            if src in per_channel:
                deq.params["scale"] = per_channel[src]
            emit(deq, "float32", 1.0)
            final.append(src + ".float")
        else:
            final.append(src)
    meta = {"dequant_output": bool(int_model.dequant_output), "input_source": source}
    return Program(name, tensors, inputs, ops, final, meta)


def _requant_params(name: str, t: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    m = _np(t["multiplier"]).astype(np.int64).reshape(-1)
    n = _np(t["shift"]).astype(np.int64).reshape(-1)
    if m.size and (m.min() < -(2**31) or m.max() >= 2**31):
        raise CompileError([CheckIssue(name, "requant", "multiplier does not fit int32")])
    if n.size and (n.min() < 0 or n.max() > 62):
        raise CompileError([CheckIssue(name, "requant", "shift outside 0..62")])
    if n.size == 1 and m.size > 1:
        n = np.repeat(n, m.size)
    if m.size == 1 and n.size > 1:
        m = np.repeat(m, n.size)
    return m.astype(np.int32), n.astype(np.int8)
