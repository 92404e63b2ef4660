"""The integer program: tensors, ops and their exact semantics (torch-free, numpy only).

A :class:`Program` is what the compiler produces, the artifact stores and the runtime runs. Its
ops form the target's instruction set (``OP_KINDS``); every op reads and writes integer tensors
(int8 / int16 activations, int32 accumulators) except ``quantize`` (float input) and
``dequantize`` (float output). The arithmetic of each kind is defined in
:mod:`fcos_plugin_nash_e.kernels`; this module holds the structure, shape inference and the
validation shared by the compiler and the artifact reader (a damaged or crafted file must fail
here, before the runtime allocates anything).

A file's checksums can be recomputed, so nothing in a program is trusted: :func:`validate_program`
checks every op against the target's limits (:data:`~fcos_plugin_nash_e.target.LIMITS`: kernel
sizes, strides, padding, channels, feature-map sizes, batch 1), infers every shape through the
program, checks each op's parameters against the channel counts, ties every input to its
quantize op, and bounds the memory the CPU runtime would need (:func:`runtime_bytes`) -- all
without allocating anything that depends on the sizes it checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from attrs import define, field

from fcos_plugin_nash_e.pyramid import PYRAMID_SCALE
from fcos_plugin_nash_e.target import ACTIVATION_DTYPES, LIMITS, QRANGE

#: dtypes a program tensor or parameter may have
DTYPES: dict[str, np.dtype] = {
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

#: op kind -> (number of inputs, allowed input counts for fused variants) and the params it needs
OP_KINDS: dict[str, dict[str, Any]] = {
    "quantize": {"inputs": (1,), "params": ()},
    "conv2d": {"inputs": (1, 2), "params": ("weight", "bias", "multiplier", "shift")},
    "requant": {"inputs": (1,), "params": ("multiplier", "shift")},
    "relu": {"inputs": (1,), "params": ()},
    "add": {"inputs": (2,), "params": ()},
    "maxpool2d": {"inputs": (1,), "params": ()},
    "upsample_nearest2d": {"inputs": (1,), "params": ()},
    "reduce_max": {"inputs": (1,), "params": ()},
    "concat": {"inputs": tuple(range(2, 65)), "params": ()},
    "dequantize": {"inputs": (1,), "params": ()},
}

#: hard limits that bound every allocation the runtime makes from a (possibly hostile) file
MAX_TENSORS = 100_000
MAX_OPS = 100_000
MAX_ELEMENTS = 1 << 28  # per tensor (256 Mi elements)
MAX_TOTAL_ACTIVATION_BYTES = 4 << 30
MAX_PARAM_ELEMENTS = 1 << 27
MAX_SHIFT = 62
#: the CPU runtime's estimated peak working memory (live tensors plus one op's temporaries, see
#: :func:`runtime_bytes`): FCOS-EfficientNet-B0 + BiFPN is estimated at 21 MB at 128x128 (13 MB
#: measured), so about 0.33 GiB at 512x512 and 1.3 GiB at 1024x1024
MAX_RUNTIME_BYTES = 2 << 30
#: scales are float32 on the target: positive, finite and normal
MIN_SCALE, MAX_SCALE = 1e-30, 1e30
MAX_INPUTS = 16


class ProgramError(ValueError):
    """A program that breaks the structure rules (the message says which op and why)."""


@define
class TensorInfo:
    """One tensor: NCHW shape (N = 1), dtype and per-tensor affine quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 1.0  # real value = (q - zero_point) * scale; 1.0 for raw accumulators
    zero_point: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


@define
class Op:
    """One instruction. ``name`` is the model layer it came from (qualified module name)."""

    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(factory=dict)
    params: dict[str, np.ndarray] = field(factory=dict)
    fused: list[str] = field(factory=list)  # source layers folded into this op


@define
class InputInfo:
    """A model input: the tensor it feeds and where the frame comes from."""

    name: str  # the model's input name (deploy_inputs key)
    tensor: str  # program tensor written by the input's quantize op
    source: str  # "pyramid" | "ddr"
    shape: tuple[int, ...]  # float input shape [1, C, H, W]


@define
class Program:
    """A compiled model: tensors, inputs, ops in execution order, outputs, metadata."""

    name: str
    tensors: dict[str, TensorInfo]
    inputs: list[InputInfo]
    ops: list[Op]
    outputs: list[str]
    meta: dict[str, Any] = field(factory=dict)  # opt level, model info for decoding ...

    def producer(self) -> dict[str, int]:
        """Tensor name -> index of the op writing it."""
        return {t: i for i, op in enumerate(self.ops) for t in op.outputs}

    def consumers(self) -> dict[str, list[int]]:
        """Tensor name -> indices of the ops reading it."""
        out: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                out.setdefault(t, []).append(i)
        return out


# --- shape inference ------------------------------------------------------------------------


def conv_out_hw(
    h: int, w: int, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]
) -> tuple[int, int]:
    """Output size of an undilated conv / pool; ``pad`` is (top, left, bottom, right)."""
    oh = (h + pad[0] + pad[2] - k[0]) // stride[0] + 1
    ow = (w + pad[1] + pad[3] - k[1]) // stride[1] + 1
    return oh, ow


def _ints(value: Any, n: int, what: str, op: Op) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ProgramError(
            f"op {op.name!r} ({op.kind}): attribute {what} must be {n} integers, got {value!r}"
        )
    return tuple(value)


def _attr(op: Op, key: str, kinds: type | tuple[type, ...]) -> Any:
    if key not in op.attrs:
        raise ProgramError(f"op {op.name!r} ({op.kind}): missing attribute {key!r}")
    value = op.attrs[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProgramError(f"op {op.name!r} ({op.kind}): attribute {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ProgramError(
            f"op {op.name!r} ({op.kind}): attribute {key!r} has the wrong type "
            f"({type(value).__name__})"
        )
    return value


def _check_out_quant(op: Op, out: TensorInfo) -> None:
    if out.dtype in QRANGE and out.dtype != "int32":
        lo, hi = QRANGE[out.dtype]
        if not lo <= out.zero_point <= hi:
            raise ProgramError(f"op {op.name!r}: zero point {out.zero_point} outside {out.dtype}")


def _check_requant_params(op: Op, channels: int) -> None:
    m, s = op.params.get("multiplier"), op.params.get("shift")
    if m is None or s is None:
        raise ProgramError(f"op {op.name!r} ({op.kind}): missing multiplier/shift parameters")
    if m.dtype != np.int32 or s.dtype != np.int8 or m.shape != s.shape or m.ndim != 1:
        raise ProgramError(f"op {op.name!r}: multiplier must be int32 [C] and shift int8 [C]")
    if m.shape[0] not in (1, channels):
        raise ProgramError(
            f"op {op.name!r}: {m.shape[0]} requant channels for {channels} output channels"
        )
    if s.size and (int(s.min()) < 0 or int(s.max()) > MAX_SHIFT):
        raise ProgramError(f"op {op.name!r}: shift outside 0..{MAX_SHIFT}")


def _check_add_attrs(op: Op, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ProgramError(f"op {op.name!r}: add attributes must be a mapping")
    for key in ("a_multiplier", "b_multiplier"):
        v = spec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not -(2**31) <= v < 2**31:
            raise ProgramError(f"op {op.name!r}: add {key} must be an int32, got {v!r}")
    s = spec.get("shift")
    if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SHIFT:
        raise ProgramError(f"op {op.name!r}: add shift must be in 0..{MAX_SHIFT}, got {s!r}")
    if not isinstance(spec.get("relu", False), bool):
        raise ProgramError(f"op {op.name!r}: add relu must be a boolean")


def _check_fused_add(op: Op, spec: Any) -> None:
    _check_add_attrs(op, spec)
    if spec.get("conv_operand") not in (0, 1):
        raise ProgramError(f"op {op.name!r}: fused add conv_operand must be 0 or 1")
    dtype, zp = spec.get("mid_dtype"), spec.get("mid_zero_point")
    if dtype not in ("int8", "int16") or not isinstance(zp, int) or isinstance(zp, bool):
        raise ProgramError(
            f"op {op.name!r}: fused add needs mid_dtype int8/int16 and an integer mid_zero_point"
        )
    lo, hi = QRANGE[dtype]
    if not lo <= zp <= hi:
        raise ProgramError(f"op {op.name!r}: mid_zero_point {zp} outside {dtype}")


def infer_shape(op: Op, ins: list[TensorInfo]) -> tuple[int, ...]:
    """The output shape ``op`` computes from its input tensors; raises ProgramError."""
    x = ins[0]
    for t in ins:
        if len(t.shape) != 4:
            raise ProgramError(
                f"op {op.name!r} ({op.kind}): input {t.name!r} must be 4-D NCHW, "
                f"got {tuple(t.shape)}"
            )
    if op.kind == "requant":
        _check_requant_params(op, x.shape[1])
    if op.kind in ("quantize", "requant", "relu", "dequantize"):
        if op.kind == "dequantize" and "scale" in op.params:
            sc = op.params["scale"]
            if (
                sc.dtype not in (np.float32, np.float64)
                or sc.shape != (x.shape[1],)
                or not np.all(np.isfinite(sc))
                or not np.all(sc >= MIN_SCALE)
                or not np.all(sc <= MAX_SCALE)
            ):
                raise ProgramError(
                    f"op {op.name!r}: per-channel scale must be positive float [{x.shape[1]}]"
                )
        return x.shape
    if len(x.shape) != 4:
        raise ProgramError(f"op {op.name!r} ({op.kind}): input must be 4-D NCHW, got {x.shape}")
    n, c, h, w = x.shape
    if op.kind == "conv2d":
        wt = op.params["weight"]
        if wt.ndim != 4:
            raise ProgramError(f"op {op.name!r}: weight must be 4-D [O, I/groups, kh, kw]")
        if x.dtype not in ACTIVATION_DTYPES:
            raise ProgramError(f"op {op.name!r}: a conv reads int8 or int16, not {x.dtype}")
        groups = _attr(op, "groups", int)
        o, ipg, kh, kw = (int(v) for v in wt.shape)
        if not (1 <= kh <= LIMITS.max_kernel and 1 <= kw <= LIMITS.max_kernel):
            raise ProgramError(
                f"op {op.name!r}: kernel {kh}x{kw} exceeds the target's "
                f"{LIMITS.max_kernel}x{LIMITS.max_kernel} limit"
            )
        if not 1 <= o <= LIMITS.max_channels:
            raise ProgramError(
                f"op {op.name!r}: {o} output channels outside 1..{LIMITS.max_channels}"
            )
        if groups < 1 or c % groups or o % groups or ipg * groups != c:
            raise ProgramError(
                f"op {op.name!r}: weight {wt.shape} with groups={groups} does not "
                f"fit {c} input channels"
            )
        stride = _ints(_attr(op, "stride", list), 2, "stride", op)
        pad = _ints(_attr(op, "padding", list), 4, "padding", op)
        if (
            any(v not in LIMITS.conv_strides for v in stride)
            or min(pad) < 0
            or max(pad) > LIMITS.max_padding
            or max(pad[0], pad[2]) >= kh
            or max(pad[1], pad[3]) >= kw
        ):
            raise ProgramError(
                f"op {op.name!r}: stride {stride} or padding {pad} outside the "
                f"target's limits (strides {LIMITS.conv_strides}, padding "
                f"0..{LIMITS.max_padding} and below the kernel size)"
            )
        oh, ow = conv_out_hw(h, w, (kh, kw), stride, pad)
        if oh < 1 or ow < 1:
            raise ProgramError(f"op {op.name!r}: output would be empty")
        if op.params["bias"].shape != (o,) or op.params["bias"].dtype != np.int32:
            raise ProgramError(f"op {op.name!r}: bias must be int32 [{o}]")
        if wt.dtype not in (np.int8, np.int16):
            raise ProgramError(f"op {op.name!r}: weight must be int8 or int16")
        _check_requant_params(op, o)
        if not isinstance(op.attrs.get("requant", True), bool):
            raise ProgramError(f"op {op.name!r}: attribute 'requant' must be a boolean")
        if len(ins) == 2:
            _check_fused_add(op, op.attrs.get("add"))
            if ins[1].shape != (n, o, oh, ow):
                raise ProgramError(
                    f"op {op.name!r}: fused add input {ins[1].shape} does not "
                    f"match the conv output {(n, o, oh, ow)}"
                )
        return (n, o, oh, ow)
    if op.kind == "add":
        if ins[1].shape != x.shape:
            raise ProgramError(f"op {op.name!r}: add of shapes {x.shape} and {ins[1].shape}")
        _check_add_attrs(op, op.attrs)
        return x.shape
    if op.kind == "maxpool2d":
        k = _ints(_attr(op, "kernel", list), 2, "kernel", op)
        stride = _ints(_attr(op, "stride", list), 2, "stride", op)
        pad = _ints(_attr(op, "padding", list), 4, "padding", op)
        if (
            any(v not in LIMITS.pool_kernels for v in k)
            or any(v not in LIMITS.pool_strides for v in stride)
            or min(pad) < 0
            or max(pad[0], pad[2]) >= k[0]
            or max(pad[1], pad[3]) >= k[1]
        ):
            raise ProgramError(
                f"op {op.name!r}: pool kernel {k}, stride {stride}, padding {pad} "
                f"outside the target's limits (kernels {LIMITS.pool_kernels}, "
                f"strides {LIMITS.pool_strides}, padding below the kernel)"
            )
        oh, ow = conv_out_hw(h, w, k, stride, pad)
        if oh < 1 or ow < 1:
            raise ProgramError(f"op {op.name!r}: output would be empty")
        return (n, c, oh, ow)
    if op.kind == "upsample_nearest2d":
        f = _attr(op, "factor", int)
        if f not in LIMITS.upsample_factors:
            raise ProgramError(
                f"op {op.name!r}: upsample factor {f} is not one of the target's "
                f"{LIMITS.upsample_factors}"
            )
        return (n, c, h * f, w * f)
    if op.kind == "reduce_max":
        return (n, 1, h, w)
    if op.kind == "concat":
        for t in ins[1:]:
            if t.shape[0] != n or tuple(t.shape[2:]) != (h, w):
                raise ProgramError(f"op {op.name!r}: concat of shapes {[i.shape for i in ins]}")
            if t.dtype != x.dtype or t.scale != x.scale or t.zero_point != x.zero_point:
                raise ProgramError(f"op {op.name!r}: concat inputs must share dtype and scale")
        return (n, sum(t.shape[1] for t in ins), h, w)
    raise ProgramError(f"op {op.name!r}: unknown kind {op.kind!r}")


def validate_program(prog: Program) -> None:
    """Check that ``prog`` is well formed: every tensor is written once before it is read,
    shapes and dtypes agree with each op, every op and tensor is within the target's limits,
    every input feeds exactly one quantize op, and the runtime's memory stays bounded."""
    if len(prog.tensors) > MAX_TENSORS or len(prog.ops) > MAX_OPS:
        raise ProgramError("too many tensors or ops")
    total = 0
    for key, t in prog.tensors.items():
        if t.name != key:
            raise ProgramError(f"tensor {key!r} is named {t.name!r}")
        if t.dtype not in DTYPES:
            raise ProgramError(f"tensor {t.name!r}: unknown dtype {t.dtype!r}")
        _check_tensor_shape(f"tensor {t.name!r}", t.shape)
        elems = int(np.prod(t.shape, dtype=np.int64))
        if elems > MAX_ELEMENTS:
            raise ProgramError(f"tensor {t.name!r}: {elems} elements exceed the limit")
        if (
            not isinstance(t.zero_point, int)
            or isinstance(t.zero_point, bool)
            or abs(t.zero_point) > 1 << 16
        ):
            raise ProgramError(f"tensor {t.name!r}: zero point {t.zero_point!r} out of range")
        if (
            not isinstance(t.scale, (int, float))
            or not np.isfinite(t.scale)
            or not MIN_SCALE <= t.scale <= MAX_SCALE
        ):
            raise ProgramError(
                f"tensor {t.name!r}: scale {t.scale!r} must be positive, finite "
                f"and within {MIN_SCALE:g}..{MAX_SCALE:g}"
            )
        total += t.nbytes
    if total > MAX_TOTAL_ACTIVATION_BYTES:
        raise ProgramError(f"activations need {total} bytes, over the limit")
    _check_inputs(prog)
    input_names = {i.name for i in prog.inputs}  # fed by the runtime, written by no op
    written: set[str] = set()
    for op in prog.ops:
        spec = OP_KINDS.get(op.kind)
        if spec is None:
            raise ProgramError(f"op {op.name!r}: unknown kind {op.kind!r}")
        if len(op.inputs) not in spec["inputs"] or len(op.outputs) != 1:
            raise ProgramError(f"op {op.name!r} ({op.kind}): wrong number of inputs/outputs")
        for p in spec["params"]:
            if p not in op.params:
                raise ProgramError(f"op {op.name!r} ({op.kind}): missing parameter {p!r}")
        for t in op.inputs + op.outputs:
            if t not in prog.tensors:
                raise ProgramError(f"op {op.name!r}: unknown tensor {t!r}")
        ins = [prog.tensors[t] for t in op.inputs]
        if op.kind == "quantize":
            if op.inputs[0] in written or ins[0].dtype != "float32":
                raise ProgramError(f"op {op.name!r}: quantize reads a float program input")
        else:
            for t in op.inputs:
                if t not in written:
                    raise ProgramError(f"op {op.name!r}: reads {t!r} before it is written")
            for t in ins:
                if t.dtype not in ("int8", "int16", "int32", "uint8"):
                    raise ProgramError(f"op {op.name!r}: reads {t.dtype} tensor {t.name!r}")
        out = prog.tensors[op.outputs[0]]
        if op.outputs[0] in written or op.outputs[0] in input_names:
            raise ProgramError(f"op {op.name!r}: tensor {out.name!r} is written twice")
        shape = infer_shape(op, ins)
        if tuple(shape) != tuple(out.shape):
            raise ProgramError(
                f"op {op.name!r}: output {out.name!r} has shape {out.shape}, "
                f"the op computes {shape}"
            )
        if op.kind == "dequantize" and out.dtype != "float32":
            raise ProgramError(f"op {op.name!r}: dequantize must write float32")
        if op.kind != "dequantize" and out.dtype not in ("int8", "int16", "int32", "uint8"):
            raise ProgramError(f"op {op.name!r}: writes unsupported dtype {out.dtype}")
        _check_out_quant(op, out)
        for key, arr in op.params.items():
            if not isinstance(arr, np.ndarray) or arr.size > MAX_PARAM_ELEMENTS:
                raise ProgramError(f"op {op.name!r}: parameter {key!r} is not a bounded array")
        written.add(op.outputs[0])
    for t in prog.outputs:
        if t not in written:
            raise ProgramError(f"output {t!r} is never written")
    peak, where = runtime_bytes(prog)
    if peak > MAX_RUNTIME_BYTES:
        raise ProgramError(
            f"running the program needs about {peak} bytes of memory (at op "
            f"{where!r}), over the limit of {MAX_RUNTIME_BYTES}"
        )


def _check_tensor_shape(what: str, shape: Any) -> None:
    """A feature map of the target: ``[1, C, H, W]`` within the channel and size limits."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 4
        or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape)
    ):
        raise ProgramError(f"{what}: shape {shape!r} is not [N, C, H, W] with positive sizes")
    n, c, h, w = shape
    if n > LIMITS.max_batch or c > LIMITS.max_channels or max(h, w) > LIMITS.max_spatial:
        raise ProgramError(
            f"{what}: shape {list(shape)} outside the target's limits (batch "
            f"{LIMITS.max_batch}, at most {LIMITS.max_channels} channels, "
            f"sizes up to {LIMITS.max_spatial})"
        )


def _check_inputs(prog: Program) -> None:
    """Each input: a float tensor of its shape, read by exactly one quantize op that writes the
    input's tensor; every quantize op reads an input (the runtime feeds nothing else)."""
    if not 1 <= len(prog.inputs) <= MAX_INPUTS:
        raise ProgramError(f"the program needs 1..{MAX_INPUTS} inputs, got {len(prog.inputs)}")
    names = [i.name for i in prog.inputs]
    if len(set(names)) != len(names) or len({i.tensor for i in prog.inputs}) != len(names):
        raise ProgramError(f"input names or tensors repeat: {names}")
    quantizers: dict[str, list[Op]] = {}
    for op in prog.ops:
        if op.kind == "quantize":
            if len(op.inputs) != 1 or op.inputs[0] not in names:
                raise ProgramError(
                    f"op {op.name!r}: quantize reads {op.inputs}, which is not a "
                    f"program input ({names})"
                )
            quantizers.setdefault(op.inputs[0], []).append(op)
    for inp in prog.inputs:
        if inp.source not in ("pyramid", "ddr"):
            raise ProgramError(f"input {inp.name!r}: unknown source {inp.source!r}")
        _check_tensor_shape(f"input {inp.name!r}", inp.shape)
        src = prog.tensors.get(inp.name)
        if src is None or src.dtype != "float32" or tuple(src.shape) != tuple(inp.shape):
            raise ProgramError(
                f"input {inp.name!r}: needs a float32 tensor {inp.name!r} of shape "
                f"{list(inp.shape)}"
            )
        if inp.tensor not in prog.tensors:
            raise ProgramError(f"input {inp.name!r}: no tensor {inp.tensor!r}")
        qs = quantizers.get(inp.name, [])
        if len(qs) != 1 or qs[0].outputs != [inp.tensor]:
            raise ProgramError(
                f"input {inp.name!r}: needs exactly one quantize op reading "
                f"{inp.name!r} and writing {inp.tensor!r}, found "
                f"{[(q.name, q.outputs) for q in qs]}"
            )
        if inp.source == "pyramid":
            t = prog.tensors[inp.tensor]
            if (
                t.dtype != "int8"
                or t.zero_point != 0
                or t.scale != PYRAMID_SCALE
                or inp.shape[1] != 3
            ):
                raise ProgramError(
                    f"input {inp.name!r}: a pyramid input is 3-channel YUV "
                    f"quantized to int8 with scale 1/128 and zero point 0"
                )


def op_workspace_bytes(op: Op, ins: list[TensorInfo], out: TensorInfo) -> int:
    """An upper estimate of the temporaries the CPU runtime allocates to run ``op`` (float64
    padded input, im2col columns, int64 accumulators and requantization steps); shapes must
    have been validated."""
    out_elems = int(np.prod(out.shape, dtype=np.int64))
    in_elems = max(int(np.prod(t.shape, dtype=np.int64)) for t in ins)
    if op.kind == "conv2d":
        _, c, h, w = ins[0].shape
        _, ipg, kh, kw = (int(v) for v in op.params["weight"].shape)
        t, left, b, r = op.attrs["padding"]
        _, _o, oh, ow = out.shape
        padded = c * (h + t + b) * (w + left + r)
        cols = ipg * kh * kw * oh * ow  # one group's im2col matrix
        return 8 * (c * h * w + padded + cols + 6 * out_elems)
    if op.kind == "maxpool2d":
        _, c, h, w = ins[0].shape
        t, left, b, r = op.attrs["padding"]
        return ins[0].nbytes // max(1, h * w) * (h + t + b) * (w + left + r) + 2 * out.nbytes
    # element-wise ops run in int64 with a few temporaries
    return 8 * 6 * max(out_elems, in_elems)


def runtime_bytes(prog: Program) -> tuple[int, str]:
    """The CPU runtime's estimated peak memory for one frame and the op where it peaks: the
    tensors alive at each op (freed after their last reader, as the runtime does) plus the op's
    temporaries. Needs a validated structure (every op's shapes consistent)."""
    last: dict[str, int] = {}
    for i, op in enumerate(prog.ops):
        for t in op.inputs:
            last[t] = len(prog.ops) if op.kind == "dequantize" else i  # kept for codes=True
    for t in prog.outputs:
        last[t] = len(prog.ops)
    live = sum(prog.tensors[i.name].nbytes for i in prog.inputs)
    peak, where = live, "<inputs>"
    for i, op in enumerate(prog.ops):
        ins = [prog.tensors[t] for t in op.inputs]
        out = prog.tensors[op.outputs[0]]
        need = live + out.nbytes + op_workspace_bytes(op, ins, out)
        if need > peak:
            peak, where = need, op.name
        live += out.nbytes
        for t in set(op.inputs):
            if last.get(t, -1) <= i:
                live -= prog.tensors[t].nbytes
    return peak, where
