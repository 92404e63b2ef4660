"""The quantized deploy model: a sequence of fcos integer ops (``QAT2Quantize`` output).

:class:`IntegerModel` holds the program as a tuple of :class:`IntOp` records (structure:
kinds, value names, dtypes, static conv/pool arguments) and every number in buffers under
``ops.<op name>.<field>`` (int8 weights, int32 biases, int64 multipliers/shifts, float32
scales), so ``state_dict``/``load_state_dict`` carry the whole quantized model and a checkpoint
loads into a freshly converted one. ``forward`` interprets the records with the functions of
:mod:`fcos_core.quantization.int_ops`; it is plain tensor code, so ``torch.jit.trace`` and
``torch.export`` capture it. :func:`integer_program` lists the program with its tensors for a
compile backend.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from fcos_core.quantization import int_ops

DTYPES: dict[str, torch.dtype] = {
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "float32": torch.float32,
}
QRANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}

#: op kinds, their inputs and the buffers each holds (see docs/quantization.md)
OP_KINDS: dict[str, tuple[str, ...]] = {
    "quantize": ("scale",),
    "conv2d": ("weight", "bias", "multiplier", "shift", "scale", "weight_scale"),
    "add": ("multiplier_a", "multiplier_b", "shift", "scale"),
    "requantize": ("multiplier", "shift", "scale"),
    "relu": ("scale",),
    "max_pool2d": ("scale",),
    "upsample_nearest2d": ("scale",),
    "cat": ("scale",),
}


@attrs.frozen
class IntOp:
    """One integer op.

    Attributes:
        name: unique; also the name of the value it produces.
        kind: one of :data:`OP_KINDS`.
        inputs: names of the values it reads (``"img"`` is the float network input).
        dtype: dtype of the produced value (int8 | int16 | int32).
        attrs: static arguments (conv stride/padding/dilation/groups, ``relu``, pool kernel,
            upsample factors, cat dim), as plain Python values.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    dtype: str
    attrs: dict[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class IntOpRecord:
    """An :class:`IntOp` with its tensors and the input dtypes/scales (for a compiler)."""

    op: IntOp
    input_dtypes: tuple[str, ...]
    input_scales: tuple[torch.Tensor, ...]
    tensors: dict[str, torch.Tensor]


class _OpParams(nn.Module):
    """Holder of one op's buffers (keys ``ops.<name>.<field>``)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key, value.clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                raise RuntimeError(
                    f"quantized model buffer {key}: checkpoint shape "
                    f"{tuple(state_dict[key].shape)} != {tuple(buf.shape)}"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class IntegerModel(nn.Module):
    """``img [B, C, H, W] float -> tuple`` of the body's outputs, in integer arithmetic.

    Args:
        ops: the program in execution order.
        tensors: op name -> its buffers (see :data:`OP_KINDS`).
        outputs: names of the values returned, in the float body's output order.
        dequant_output: True: outputs are float32 (``float32(q * s)``). False: outputs are the
            integer tensors (int8/int16/int32); their scales are :meth:`output_scales`.
    """

    def __init__(
        self,
        ops: list[IntOp],
        tensors: dict[str, dict[str, torch.Tensor]],
        outputs: list[str],
        dequant_output: bool = True,
    ) -> None:
        super().__init__()
        names = [op.name for op in ops]
        if len(set(names)) != len(names):
            raise ValueError("ops: op names must be unique")
        for op in ops:
            if op.kind not in OP_KINDS:
                raise ValueError(f"ops: unknown integer op kind {op.kind!r}")
            optional = {"bias"} | ({"multiplier", "shift"} if op.dtype == "int32" else set())
            missing = set(OP_KINDS[op.kind]) - set(tensors.get(op.name, {})) - optional
            if missing:
                raise ValueError(f"op {op.name}: missing tensors {sorted(missing)}")
        self.program: tuple[IntOp, ...] = tuple(ops)
        self.ops = nn.ModuleDict({op.name: _OpParams(tensors[op.name]) for op in ops})
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.dequant_output = bool(dequant_output)
        self._dtype_of = {op.name: op.dtype for op in ops}

    def output_scales(self) -> tuple[torch.Tensor, ...]:
        """Scale of each output (float32 per tensor; per channel [C] for an int32 output)."""
        return tuple(self.ops[name].scale for name in self.outputs)

    def output_dtypes(self) -> tuple[str, ...]:
        return tuple(self._dtype_of[name] for name in self.outputs)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {"img": img}
        for op in self.program:
            env[op.name] = self._run(op, env)
        outs = [env[name] for name in self.outputs]
        if self.dequant_output:
            outs = [
                int_ops.dequantize(q, self.ops[name].scale) for q, name in zip(outs, self.outputs)
            ]
        return tuple(outs)

    def run_all(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every value of the program (integer tensors), for debugging and the report."""
        env: dict[str, torch.Tensor] = {"img": img}
        for op in self.program:
            env[op.name] = self._run(op, env)
        return env

    def _run(self, op: IntOp, env: dict[str, torch.Tensor]) -> torch.Tensor:
        p = self.ops[op.name]
        a = op.attrs
        dtype = DTYPES[op.dtype]
        qmin, qmax = QRANGES[op.dtype]
        x = [env[i] for i in op.inputs]
        if op.kind == "quantize":
            return int_ops.quantize(x[0], p.scale, qmin, qmax, dtype)
        if op.kind == "conv2d":
            acc = int_ops.conv2d_acc(
                x[0],
                p.weight,
                getattr(p, "bias", None),
                a["stride"],
                a["padding"],
                a["dilation"],
                a["groups"],
            )
            if op.dtype == "int32":
                return int_ops.saturate(acc.clamp_min(0) if a["relu"] else acc, qmin, qmax, dtype)
            return int_ops.requantize(acc, p.multiplier, p.shift, qmin, qmax, dtype, a["relu"])
        if op.kind == "add":
            return int_ops.add(
                x[0], x[1], p.multiplier_a, p.multiplier_b, p.shift, qmin, qmax, dtype, a["relu"]
            )
        if op.kind == "requantize":
            return int_ops.requantize(x[0], p.multiplier, p.shift, qmin, qmax, dtype)
        if op.kind == "relu":
            return int_ops.relu(x[0])
        if op.kind == "max_pool2d":
            return int_ops.max_pool2d(
                x[0], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
            )
        if op.kind == "upsample_nearest2d":
            return int_ops.upsample_nearest2d(x[0], a["output_size"], a["scale_factors"])
        if op.kind == "cat":
            return int_ops.cat(x, a["dim"])
        raise RuntimeError(f"unknown integer op kind {op.kind}")


def integer_program(model: IntegerModel) -> list[IntOpRecord]:
    """The program of ``model`` as records with their current tensors, in execution order.

    Each record has the op (kind, names, dtype, static arguments), the dtypes and scales of its
    inputs (``img``: float32, scale None -> an empty tensor) and its tensors (int8 weights,
    int32 bias, int64 multipliers/shifts, float32 scales; float64 for an int32 output's scale).
    """
    scale_of: dict[str, torch.Tensor] = {"img": torch.empty(0)}
    dtype_of: dict[str, str] = {"img": "float32"}
    records = []
    for op in model.program:
        p = model.ops[op.name]
        tensors = {k: v.detach().clone() for k, v in p.named_buffers()}
        records.append(
            IntOpRecord(
                op=op,
                input_dtypes=tuple(dtype_of[i] for i in op.inputs),
                input_scales=tuple(scale_of[i] for i in op.inputs),
                tensors=tensors,
            )
        )
        scale_of[op.name] = tensors["scale"]
        dtype_of[op.name] = op.dtype
    return records
