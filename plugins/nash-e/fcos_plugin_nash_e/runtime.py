"""Execute a :class:`~fcos_plugin_nash_e.ir.Program` on the CPU with integer arithmetic.

The runtime is the reference implementation of the target's instruction set: each op calls the
exact kernels of :mod:`fcos_plugin_nash_e.kernels`. Fused ops (``opt`` O1+) run their parts in
sequence inside one op and keep the intermediate integer values, so every opt level computes the
same bits. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fcos_core.errors import FcosUserError
from fcos_plugin_nash_e import kernels as K
from fcos_plugin_nash_e.ir import Op, Program, TensorInfo, validate_program
from fcos_plugin_nash_e.pyramid import PYRAMID_SCALE, to_yuv444, yuv444_to_int8


class RuntimeInputError(FcosUserError):
    """Inputs that do not fit the compiled program."""


def _conv(
    op: Op,
    x: np.ndarray,
    tin: TensorInfo,
    tout: TensorInfo,
    residual: np.ndarray | None,
    tres: TensorInfo | None,
) -> np.ndarray:
    a = op.attrs
    p = op.params
    acc = K.conv2d_acc(
        x,
        tin.zero_point,
        p["weight"],
        p["bias"],
        tuple(a["stride"]),
        tuple(a["padding"]),
        a["groups"],
    )
    if not a.get("requant", True):  # raw accumulator output (int32), ReLU at 0
        return K.saturate(np.maximum(acc, 0) if a.get("relu", False) else acc, "int32")
    if residual is None:
        return K.requantize(
            acc,
            p["multiplier"],
            p["shift"],
            tout.zero_point,
            tout.dtype,
            relu=bool(a.get("relu", False)),
        )
    add = a["add"]
    mid = K.requantize(
        acc,
        p["multiplier"],
        p["shift"],
        add["mid_zero_point"],
        add["mid_dtype"],
        relu=bool(a.get("relu", False)),
    )
    operands = (mid, residual) if add["conv_operand"] == 0 else (residual, mid)
    zps = (
        (add["mid_zero_point"], tres.zero_point)
        if add["conv_operand"] == 0
        else (tres.zero_point, add["mid_zero_point"])
    )
    return K.add(
        operands[0],
        operands[1],
        zps[0],
        zps[1],
        add["a_multiplier"],
        add["b_multiplier"],
        add["shift"],
        tout.zero_point,
        tout.dtype,
        bool(add.get("relu", False)),
    )


def execute_op(
    op: Op,
    args: list[np.ndarray],
    tin: list[TensorInfo],
    tout: TensorInfo,
) -> np.ndarray:
    """Run one op on its input arrays; returns the output array (``tout``'s dtype)."""
    k, a = op.kind, op.attrs
    x = args[0]
    if k == "quantize":
        return K.quantize(x, tout.scale, tout.zero_point, tout.dtype)
    if k == "conv2d":
        res = args[1] if len(args) == 2 else None
        return _conv(op, x, tin[0], tout, res, tin[1] if res is not None else None)
    if k == "requant":
        acc = x.astype(np.int64) - tin[0].zero_point
        return K.requantize(
            acc,
            op.params["multiplier"],
            op.params["shift"],
            tout.zero_point,
            tout.dtype,
            relu=bool(a.get("relu", False)),
        )
    if k == "relu":
        return K.relu(x, tin[0].zero_point).astype(tout.dtype)
    if k == "add":
        return K.add(
            x,
            args[1],
            tin[0].zero_point,
            tin[1].zero_point,
            a["a_multiplier"],
            a["b_multiplier"],
            a["shift"],
            tout.zero_point,
            tout.dtype,
            bool(a.get("relu", False)),
        )
    if k == "maxpool2d":
        return K.maxpool2d(x, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
    if k == "upsample_nearest2d":
        return K.upsample_nearest(x, a["factor"])
    if k == "reduce_max":
        return K.reduce_max_channels(x)
    if k == "concat":
        return np.concatenate(args, axis=1)
    if k == "dequantize":
        scale = op.params.get("scale", tin[0].scale)
        return K.dequantize(x, scale, tin[0].zero_point)
    raise ValueError(f"unknown op kind {k!r}")  # validate_program rejects this earlier


class Runtime:
    """Runs a validated program; one frame at a time, a batch is looped over."""

    def __init__(self, program: Program, validate: bool = True) -> None:
        if validate:
            validate_program(program)
        self.program = program
        self._last_use = self._liveness()

    def _liveness(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, op in enumerate(self.program.ops):
            for t in op.inputs:
                last[t] = i
        for t in self.program.outputs:
            last[t] = len(self.program.ops)
        return last

    def _frame_input(self, inp, value: Any, b: int) -> np.ndarray:
        """One frame of one input as the float/int8 array its first op reads."""
        _, c, h, w = inp.shape
        if inp.source == "pyramid":
            frame = (
                value[b]
                if isinstance(value, (list, tuple))
                else (
                    value
                    if isinstance(value, Mapping) or np.asarray(value).ndim <= 3
                    else np.asarray(value)[b]
                )
            )
            return yuv444_to_int8(to_yuv444(frame, h, w))
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu" or arr.ndim != 4 or tuple(arr.shape[1:]) != (c, h, w):
            raise RuntimeInputError(
                f"input {inp.name!r} must be a numeric [B, {c}, {h}, {w}] "
                f"array, got {arr.dtype} {tuple(arr.shape)}",
                hint="pass the normalised image tensor the model takes",
            )
        return arr[b : b + 1].astype(np.float32)

    def _batch_size(self, inputs: Mapping[str, Any]) -> int:
        sizes = set()
        for inp in self.program.inputs:
            v = inputs[inp.name]
            if inp.source == "pyramid":
                if isinstance(v, (list, tuple)):
                    sizes.add(len(v))
                elif isinstance(v, Mapping) or np.asarray(v).ndim <= 3:
                    sizes.add(1)
                else:
                    sizes.add(np.asarray(v).shape[0])
            else:
                sizes.add(np.asarray(v).shape[0] if np.asarray(v).ndim == 4 else -1)
        if len(sizes) != 1 or min(sizes) < 1:
            raise RuntimeInputError(f"inputs have inconsistent batch sizes {sorted(sizes)}")
        return sizes.pop()

    def run(self, inputs: Mapping[str, Any], codes: bool = False) -> tuple[np.ndarray, ...]:
        """Outputs for ``inputs`` (input name -> array or pyramid frame(s)), batch on axis 0.

        ``codes=True`` returns the integer codes of dequantized outputs instead of floats.
        """
        prog = self.program
        missing = [i.name for i in prog.inputs if i.name not in inputs]
        if missing:
            raise RuntimeInputError(
                f"missing inputs {missing}; the program takes {[i.name for i in prog.inputs]}"
            )
        results: list[list[np.ndarray]] = []
        for b in range(self._batch_size(inputs)):
            results.append(
                self._run_frame(
                    {i.name: self._frame_input(i, inputs[i.name], b) for i in prog.inputs}, codes
                )
            )
        return tuple(np.concatenate([r[k] for r in results]) for k in range(len(prog.outputs)))

    def _run_frame(self, frames: dict[str, np.ndarray], codes: bool) -> list[np.ndarray]:
        prog = self.program
        env: dict[str, np.ndarray] = {}
        pre_quantized: dict[str, np.ndarray] = {}
        for inp in prog.inputs:
            if inp.source == "pyramid":
                pre_quantized[inp.tensor] = frames[inp.name]  # already the exact int8 input
            else:
                env[inp.name] = frames[inp.name]
        deq_src: dict[str, str] = {}
        for i, op in enumerate(prog.ops):
            out = op.outputs[0]
            if op.kind == "quantize" and out in pre_quantized:
                env[out] = pre_quantized[out]
            else:
                args = [env[t] for t in op.inputs]
                tin = [prog.tensors[t] for t in op.inputs]
                env[out] = execute_op(op, args, tin, prog.tensors[out])
            if op.kind == "dequantize":
                deq_src[out] = op.inputs[0]
            for t in op.inputs:  # free what no later op reads
                if self._last_use.get(t, -1) <= i and t not in deq_src.values():
                    env.pop(t, None)
        outs = []
        for t in prog.outputs:
            if codes and t in deq_src:
                outs.append(env[deq_src[t]])
            else:
                outs.append(env[t])
        return outs


def check_pyramid_input(tensor: TensorInfo) -> str | None:
    """Why a pyramid source cannot feed this quantized input (None: it can)."""
    if tensor.dtype != "int8" or tensor.zero_point != 0 or tensor.scale != PYRAMID_SCALE:
        return (
            f"a pyramid input needs the int8 input quantized with scale 1/128 and zero "
            f"point 0 (yuv - 128), got {tensor.dtype} scale {tensor.scale} zero point "
            f"{tensor.zero_point}"
        )
    if tensor.shape[1] != 3:
        return f"a pyramid input has 3 channels (YUV), the model input has {tensor.shape[1]}"
    return None
