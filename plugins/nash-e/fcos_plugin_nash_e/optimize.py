"""Optimisation levels: fusion and scheduling passes that never change a single output bit.

The lowering produces the *canonical* program: one op per integer-model op, with the
requantization and ReLU already inside the conv / add that owns them (that is how the integer
model defines them). Each level then rewrites it:

* **O0** -- no fusion: every conv becomes ``conv2d`` (raw int32 accumulator) + ``requant``
  (+ ``relu``), every add with ReLU becomes ``add`` + ``relu``. Every intermediate goes through
  memory; useful to debug and as the performance baseline.
* **O1** -- requant folding: the canonical program (conv+BN+ReLU and requantization in one op,
  add+ReLU in one op).
* **O2** -- O1 + conv+add fusion: an add whose operand is a conv output read by nothing else
  runs inside that conv (the conv's requantized value stays in registers).
* **O3** -- O2 + scheduling: dead ops removed, ops reordered (a topological order that keeps the
  fewest bytes alive), and an on-chip buffer plan (tensors reused in place of freed ones).

Why the outputs cannot change: a fused op executes exactly the kernels of the ops it replaces,
in the same order, on the same integer values (O0's int32 accumulator is the exact accumulator
the fused conv requantizes; the fused conv+add requantizes the conv to the same int8/int16
intermediate, zero point included, before the add). Reordering only changes when an op runs,
never its inputs. The test suite checks all four levels against the integer model bit for bit.
Torch-free.
"""

from __future__ import annotations

import copy
import heapq
from typing import Any

from fcos_plugin_nash_e.ir import Op, Program, TensorInfo

OPT_LEVELS = ("O0", "O1", "O2", "O3")


def unfuse(prog: Program) -> Program:
    """O0: split requantization and ReLU out of convs and adds."""
    out = copy.copy(prog)
    out.tensors = dict(prog.tensors)
    ops: list[Op] = []
    for op in prog.ops:
        if op.kind == "conv2d" and op.attrs.get("requant", True) and len(op.inputs) == 1:
            final = prog.tensors[op.outputs[0]]
            acc_name = op.outputs[0] + ".acc"
            out.tensors[acc_name] = TensorInfo(acc_name, final.shape, "int32", 1.0, 0)
            conv_attrs = {k: v for k, v in op.attrs.items() if k != "relu"}
            conv_attrs["requant"] = False
            ops.append(
                Op("conv2d", op.name, list(op.inputs), [acc_name], conv_attrs, dict(op.params), [])
            )
            rq_out = op.outputs[0]
            relu = bool(op.attrs.get("relu", False))
            if relu:
                rq_out = op.outputs[0] + ".pre_relu"
                out.tensors[rq_out] = TensorInfo(
                    rq_out, final.shape, final.dtype, final.scale, final.zero_point
                )
            ops.append(
                Op(
                    "requant",
                    op.name + ".requant",
                    [acc_name],
                    [rq_out],
                    {},
                    {"multiplier": op.params["multiplier"], "shift": op.params["shift"]},
                    [],
                )
            )
            if relu:
                ops.append(Op("relu", op.name + ".relu", [rq_out], list(op.outputs), {}, {}, []))
        elif op.kind == "add" and op.attrs.get("relu", False):
            final = prog.tensors[op.outputs[0]]
            mid = op.outputs[0] + ".pre_relu"
            out.tensors[mid] = TensorInfo(
                mid, final.shape, final.dtype, final.scale, final.zero_point
            )
            ops.append(
                Op("add", op.name, list(op.inputs), [mid], {**op.attrs, "relu": False}, {}, [])
            )
            ops.append(Op("relu", op.name + ".relu", [mid], list(op.outputs), {}, {}, []))
        else:
            ops.append(op)
    out.ops = ops
    return out


def fuse_conv_add(prog: Program) -> Program:
    """O2: run an add inside the conv that produces one of its operands."""
    out = copy.copy(prog)
    producer = prog.producer()
    consumers = prog.consumers()
    outputs = set(prog.outputs)
    fused_convs: dict[int, tuple[int, int]] = {}  # conv index -> (add index, operand)
    for i, op in enumerate(prog.ops):
        if op.kind != "add":
            continue
        cands = []
        for operand, t in enumerate(op.inputs):
            j = producer.get(t)
            if (
                j is not None
                and prog.ops[j].kind == "conv2d"
                and len(prog.ops[j].inputs) == 1
                and prog.ops[j].attrs.get("requant", True)
                and consumers.get(t) == [i]
                and t not in outputs
                and j not in fused_convs
                and op.inputs[0] != op.inputs[1]
            ):
                cands.append((j, operand))
        if cands:
            j, operand = max(cands)  # the later conv: the other operand is ready before it
            fused_convs[j] = (i, operand)
    ops: list[Op] = []
    replaced = {i: j for j, (i, _) in fused_convs.items()}
    tensors = dict(prog.tensors)
    for i, op in enumerate(prog.ops):
        if i in fused_convs:
            continue  # emitted at the add's position
        if i in replaced:
            j = replaced[i]
            conv = prog.ops[j]
            operand = fused_convs[j][1]
            mid = prog.tensors[conv.outputs[0]]
            residual = op.inputs[1 - operand]
            attrs: dict[str, Any] = dict(conv.attrs)
            attrs["add"] = {
                "a_multiplier": op.attrs["a_multiplier"],
                "b_multiplier": op.attrs["b_multiplier"],
                "shift": op.attrs["shift"],
                "relu": bool(op.attrs.get("relu")),
                "conv_operand": operand,
                "mid_dtype": mid.dtype,
                "mid_zero_point": mid.zero_point,
            }
            ops.append(
                Op(
                    "conv2d",
                    conv.name,
                    [conv.inputs[0], residual],
                    list(op.outputs),
                    attrs,
                    dict(conv.params),
                    [*conv.fused, op.name, *op.fused],
                )
            )
            tensors.pop(conv.outputs[0], None)
        else:
            ops.append(op)
    out.ops = ops
    out.tensors = tensors
    return out


def eliminate_dead(prog: Program) -> Program:
    """Drop ops whose outputs nothing reads (and that are not program outputs)."""
    live = set(prog.outputs)
    keep = []
    for op in reversed(prog.ops):
        if any(t in live for t in op.outputs):
            keep.append(op)
            live.update(op.inputs)
    out = copy.copy(prog)
    out.ops = list(reversed(keep))
    used = {t for op in out.ops for t in op.inputs + op.outputs}
    out.tensors = {k: v for k, v in prog.tensors.items() if k in used}
    return out


def schedule(prog: Program) -> Program:
    """Greedy memory-aware topological order: among ready ops, run the one that frees the most
    bytes (ties: original order), so large feature maps die early."""
    producer = prog.producer()
    consumers = prog.consumers()
    deps = [{producer[t] for t in op.inputs if t in producer} for op in prog.ops]
    users: dict[int, set[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, set()).add(i)
    remaining_reads = {t: len(set(c)) for t, c in consumers.items()}
    outputs = set(prog.outputs)
    waiting = [len(d) for d in deps]

    def gain(i: int) -> int:
        op = prog.ops[i]
        freed = sum(
            prog.tensors[t].nbytes
            for t in set(op.inputs)
            if remaining_reads.get(t, 0) == 1 and t not in outputs
        )
        return freed - sum(prog.tensors[t].nbytes for t in op.outputs)

    ready = [(-gain(i), i) for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for t in set(prog.ops[i].inputs):
            remaining_reads[t] = remaining_reads.get(t, 1) - 1
        for j in sorted(users.get(i, ())):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (-gain(j), j))
        # gains of ready ops may change as reads complete; recompute lazily
        ready = [(-gain(j), j) for _, j in ready]
        heapq.heapify(ready)
    out = copy.copy(prog)
    out.ops = [prog.ops[i] for i in order]
    return out


def plan_memory(prog: Program) -> dict[str, Any]:
    """First-fit buffer plan over tensor lifetimes: offsets and the peak bytes.

    Program inputs (float) are not planned; every integer tensor gets an offset in one arena,
    64-byte aligned, reused once its last reader has run.
    """
    last: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, op in enumerate(prog.ops):
        for t in op.outputs:
            first.setdefault(t, i)
        for t in op.inputs:
            last[t] = i
    end = len(prog.ops)
    for t in prog.outputs:
        last[t] = end
    live: list[tuple[int, int, str]] = []  # (offset, size, tensor)
    offsets: dict[str, int] = {}
    peak = 0
    for i, op in enumerate(prog.ops):
        live = [(o, s, t) for o, s, t in live if last.get(t, first[t]) >= i]
        for t in op.outputs:
            size = (prog.tensors[t].nbytes + 63) // 64 * 64
            taken = sorted((o, o + s) for o, s, _ in live)
            off = 0
            for lo, hi in taken:
                if off + size <= lo:
                    break
                off = max(off, hi)
            offsets[t] = off
            live.append((off, size, t))
            peak = max(peak, off + size)
    naive = sum(prog.tensors[t].nbytes for t in first)
    return {"offsets": offsets, "peak_bytes": int(peak), "unplanned_bytes": int(naive)}


def optimize(prog: Program, level: str) -> Program:
    """Apply the passes of ``level`` (see the module docstring) to a canonical program."""
    if level not in OPT_LEVELS:
        raise ValueError(f"opt must be one of {', '.join(OPT_LEVELS)}, got {level!r}")
    if level == "O0":
        out = unfuse(prog)
    elif level == "O1":
        out = copy.copy(prog)
    else:
        out = fuse_conv_add(prog)
        if level == "O3":
            out = schedule(eliminate_dead(out))
    out.meta = {**prog.meta, "opt": level}
    if level == "O3":
        plan = plan_memory(out)
        out.meta["memory_plan"] = {
            "peak_bytes": plan["peak_bytes"],
            "unplanned_bytes": plan["unplanned_bytes"],
        }
    return out
