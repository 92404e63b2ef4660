"""Performance model: per-layer MACs, parameters, memory traffic and estimated cycles.

Assumed target (:class:`~fcos_plugin_nash_e.target.PerfModel`, also in the README): 1.0 GHz,
a conv engine of 64 x 64 int8 MACs (64 input channels reduced x 64 output channels produced per
cycle = 4096 MAC/cycle), depthwise convs on 64 lanes with kernel taps serialised, a vector unit
of 128 bytes/cycle for element-wise ops, 32 bytes/cycle of DDR bandwidth and 400 cycles of
fixed cost per op. Per op::

    compute  conv (dense/grouped): OH*OW * kh*kw * ceil(Cin_g / 64) * ceil(Cout_g / 64) * groups
             conv (depthwise):     OH*OW * kh*kw * ceil(C / 64)
             (x4 when the input is int16: an int16 operand takes four int8 MAC slots)
             element-wise / pool / resize / reduce: bytes touched / 128
    memory   (bytes read from DDR + bytes written to DDR + parameter bytes) / 32
    cycles   max(compute, memory) + 400

The ceil terms are the array's utilisation loss: a conv with 24 input channels uses 24 of 64
rows. A tensor is read from on-chip SRAM instead of DDR when it is the previous op's output
and fits in half of the 2 MiB SRAM (at O3 the scheduler places producers right before their
consumers, which is how scheduling shows up in the estimate); fused intermediates (O1+) never
leave the engine. Estimated latency = total cycles / clock. These are estimates of an assumed
machine, not measurements of Horizon hardware. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fcos_plugin_nash_e.ir import Program
from fcos_plugin_nash_e.target import PERF, PerfModel

SRAM_BYTES = 2 << 20


def _prod(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def conv_macs(op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    _o, ipg, kh, kw = op.params["weight"].shape
    return _prod(out_shape) * int(ipg) * int(kh) * int(kw)


def layer_estimate(
    prog: Program, index: int, pm: PerfModel = PERF, on_chip: set[str] | None = None
) -> dict[str, Any]:
    """The performance record of op ``index`` (see the module docstring)."""
    op = prog.ops[index]
    ins = [prog.tensors[t] for t in op.inputs]
    out = prog.tensors[op.outputs[0]]
    on_chip = on_chip or set()
    macs = 0
    if op.kind == "conv2d":
        w = op.params["weight"]
        o, ipg, kh, kw = (int(v) for v in w.shape)
        groups = int(op.attrs["groups"])
        _, _, oh, ow = out.shape
        macs = conv_macs(op, ins[0].shape, out.shape)
        factor = pm.int16_mac_factor if ins[0].dtype == "int16" else 1
        if groups == ins[0].shape[1] and ipg == 1 and o == groups:
            compute = oh * ow * kh * kw * math.ceil(o / pm.depthwise_lanes)
        else:
            opg = o // groups
            compute = (
                oh
                * ow
                * kh
                * kw
                * math.ceil(ipg / pm.mac_rows)
                * math.ceil(opg / pm.mac_cols)
                * groups
            )
        compute *= factor
        if len(ins) == 2:  # fused add on the vector unit, overlapped with the conv
            compute = max(compute, math.ceil(out.nbytes / pm.vector_bytes_per_cycle))
    elif op.kind in ("quantize", "dequantize"):
        compute = math.ceil(max(ins[0].nbytes, out.nbytes) / pm.vector_bytes_per_cycle)
    else:
        touched = sum(t.nbytes for t in ins) + out.nbytes
        compute = math.ceil(touched / pm.vector_bytes_per_cycle)
    param_bytes = sum(int(a.nbytes) for a in op.params.values())
    param_count = (
        int(op.params["weight"].size + op.params["bias"].size) if op.kind == "conv2d" else 0
    )
    read = sum(t.nbytes for t in ins if t.name not in on_chip)
    written = out.nbytes
    memory = math.ceil((read + written + param_bytes) / pm.ddr_bytes_per_cycle)
    cycles = max(compute, memory) + pm.op_overhead_cycles
    return {
        "index": index,
        "layer": op.name,
        "op": op.kind,
        "fused": list(op.fused),
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ins],
        "output": {"name": out.name, "shape": list(out.shape), "dtype": out.dtype},
        "macs": int(macs),
        "params": param_count,
        "param_bytes": param_bytes,
        "ddr_bytes": int(read + written + param_bytes),
        "compute_cycles": int(compute),
        "memory_cycles": int(memory),
        "cycles": int(cycles),
        "bound": "compute" if compute >= memory else "memory",
        "time_us": cycles / pm.clock_hz * 1e6,
    }


def estimate(prog: Program, pm: PerfModel = PERF) -> dict[str, Any]:
    """Per-layer records and totals for a whole program."""
    layers = []
    prev_out: str | None = None
    fused_level = prog.meta.get("opt", "O1") != "O0"
    for i, op in enumerate(prog.ops):
        on_chip: set[str] = set()
        # the previous op's output stays in SRAM for its immediate consumer when it fits
        if (
            fused_level
            and prev_out is not None
            and prog.tensors[prev_out].nbytes <= SRAM_BYTES // 2
        ):
            on_chip.add(prev_out)
        layers.append(layer_estimate(prog, i, pm, on_chip))
        prev_out = op.outputs[0]
    total_cycles = sum(r["cycles"] for r in layers)
    totals = {
        "layers": len(layers),
        "macs": sum(r["macs"] for r in layers),
        "params": sum(r["params"] for r in layers),
        "param_bytes": sum(r["param_bytes"] for r in layers),
        "ddr_bytes": sum(r["ddr_bytes"] for r in layers),
        "cycles": total_cycles,
        "latency_ms": total_cycles / pm.clock_hz * 1e3,
    }
    return {
        "model": prog.name,
        "opt": prog.meta.get("opt"),
        "perf_model": {
            "clock_hz": pm.clock_hz,
            "mac_array": [pm.mac_rows, pm.mac_cols],
            "macs_per_cycle": pm.macs_per_cycle,
            "int16_mac_factor": pm.int16_mac_factor,
            "depthwise_lanes": pm.depthwise_lanes,
            "vector_bytes_per_cycle": pm.vector_bytes_per_cycle,
            "ddr_bytes_per_cycle": pm.ddr_bytes_per_cycle,
            "op_overhead_cycles": pm.op_overhead_cycles,
            "sram_bytes": SRAM_BYTES,
            "formula": "cycles = max(compute, memory) + overhead; see the nash-e README",
        },
        "memory_plan": prog.meta.get("memory_plan"),
        "layers": layers,
        "totals": totals,
    }
