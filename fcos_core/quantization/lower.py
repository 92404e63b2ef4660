"""Lower a ``convert_pt2e`` Q/DQ graph into an :class:`IntegerModel`.

Every ``quantize_per_tensor`` node of the converted graph marks one integer value; the float
ops between the dequantize nodes feeding it and it are the integer op that produces it:

=============================================  ==============================================
Q/DQ pattern                                   integer op
=============================================  ==============================================
placeholder -> q                               quantize (float image -> int)
dq(x), dq_pc(w), b -> conv2d [-> relu] -> q     conv2d (int32 acc, requantize [relu])
dq(a), dq(b) -> add [-> relu] -> q              add (both rescaled, one rounding [relu])
dq(x) -> relu / max_pool2d / upsample -> q      same-scale op
[dq(x_i)] -> cat -> q                           cat (one shared scale)
dq(x) -> q (other scale or dtype)              requantize
dq(x), dq_pc(w), b -> conv2d [-> relu] -> out   conv2d with an int32 output (no requantize)
=============================================  ==============================================

Anything else is refused with the node's name: the rules decide what may appear, and a graph
the integer op set cannot express must not be deployed silently in float.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import fx

from fcos_core.graph_names import op_name
from fcos_core.quantization import int_ops
from fcos_core.quantization.integer_model import IntegerModel, IntOp
from fcos_core.quantization.rules import QuantRules

_qd = torch.ops.quantized_decomposed
Q_PT = _qd.quantize_per_tensor.default
DQ_PT = _qd.dequantize_per_tensor.default
DQ_PC = _qd.dequantize_per_channel.default
_DTYPE_NAMES = {torch.int8: "int8", torch.int16: "int16"}


@attrs.frozen
class _QValue:
    name: str
    scale: float  # exact float32 value, as a Python float
    dtype: str


def _attr(gm: fx.GraphModule, node: Any) -> Any:
    if isinstance(node, fx.Node):
        if node.op != "get_attr":
            raise ValueError(f"expected a constant at {node.name}, got {node.op}")
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    return node


def _scalar(gm: fx.GraphModule, node: Any) -> float:
    v = _attr(gm, node)
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


class _Lowerer:
    def __init__(self, gm: fx.GraphModule, rules: QuantRules) -> None:
        self.gm = gm
        self.rules = rules
        self.values: dict[fx.Node, _QValue] = {}
        self.ops: list[IntOp] = []
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.used_names: set[str] = {"img"}
        self.warnings: list[str] = []
        self.source = ""  # float node whose value the op being lowered reproduces

    # -- helpers -----------------------------------------------------------------------------

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    def _emit(
        self,
        base: str,
        kind: str,
        inputs: list[_QValue | str],
        dtype: str,
        tensors: dict[str, torch.Tensor],
        **attrs_: Any,
    ) -> str:
        name = self._unique(base)
        in_names = tuple(v if isinstance(v, str) else v.name for v in inputs)
        attrs_["source"] = self.source
        self.ops.append(IntOp(name=name, kind=kind, inputs=in_names, dtype=dtype, attrs=attrs_))
        self.tensors[name] = tensors
        return name

    def _dq(self, node: Any, user: fx.Node) -> _QValue:
        if not (isinstance(node, fx.Node) and node in self.values):
            raise ValueError(
                f"cannot lower {user.name}: its input {getattr(node, 'name', node)} "
                "is not a quantized tensor"
            )
        return self.values[node]

    @staticmethod
    def _scale_t(scale: float) -> torch.Tensor:
        return torch.tensor(scale, dtype=torch.float32)

    # -- patterns ----------------------------------------------------------------------------

    def quantize_node(self, q: fx.Node) -> _QValue:
        src = q.args[0]
        scale = _scalar(self.gm, q.args[1])
        zp = int(_scalar(self.gm, q.args[2]))
        dtype = _DTYPE_NAMES.get(q.args[5])
        if zp != 0 or dtype is None:
            raise ValueError(
                f"{q.name}: fcos lowers symmetric int8/int16 quantization only "
                f"(zero point {zp}, dtype {q.args[5]})"
            )
        out = _QValue("", scale, dtype)
        assert isinstance(src, fx.Node)
        self.source = src.name
        if src.op == "placeholder":
            name = self._emit(
                "quantize_" + src.name, "quantize", ["img"], dtype, {"scale": self._scale_t(scale)}
            )
            return attrs.evolve(out, name=name)
        if src in self.values:  # dq -> q: requantize (or the same value)
            v = self.values[src]
            if v.scale == scale and v.dtype == dtype:
                return v
            self.source = next(op.attrs["source"] for op in self.ops if op.name == v.name)
            return attrs.evolve(out, name=self._requantize(v, out, base=v.name + "_requant"))
        relu = False
        core = src
        if src.op == "call_function" and op_name(src) == "relu":
            inner = src.args[0]
            if isinstance(inner, fx.Node) and inner in self.values:
                return attrs.evolve(out, name=self._same_scale(src, "relu", [inner], out))
            relu, core = True, inner
        assert isinstance(core, fx.Node)
        kind = op_name(core) if core.op == "call_function" else core.op
        if kind == "conv2d":
            return attrs.evolve(out, name=self._conv(core, out, relu))
        if kind == "add":
            return attrs.evolve(out, name=self._add(core, out, relu))
        if relu:
            raise ValueError(f"cannot lower {src.name}: relu after {kind} is not fusable")
        if kind in ("max_pool2d", "upsample_nearest2d"):
            return attrs.evolve(out, name=self._same_scale(core, kind, [core.args[0]], out))
        if kind == "cat":
            return attrs.evolve(out, name=self._same_scale(core, "cat", list(core.args[0]), out))
        raise ValueError(
            f"cannot lower {core.name} ({kind}) feeding {q.name}: not in the fcos "
            "integer op set (conv2d, add, relu, max_pool2d, upsample_nearest2d, "
            "cat, requantize)"
        )

    def _requantize(self, v: _QValue, out: _QValue, base: str) -> str:
        real = torch.tensor(v.scale / out.scale, dtype=torch.float64)
        m, n = int_ops.quantize_multiplier(real, self.rules.multiplier_bits, self.rules.max_shift)
        return self._emit(
            base,
            "requantize",
            [v],
            out.dtype,
            {"multiplier": m, "shift": n, "scale": self._scale_t(out.scale)},
        )

    def _conv_parts(
        self, conv: fx.Node
    ) -> tuple[_QValue, torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        args = list(conv.args) + [None] * (7 - len(conv.args))
        x = self._dq(args[0], conv)
        wdq = args[1]
        if not (isinstance(wdq, fx.Node) and wdq.target == DQ_PC):
            raise ValueError(f"{conv.name}: weight is not per-channel quantized")
        w_q = _attr(self.gm, wdq.args[0])
        w_scale = _attr(self.gm, wdq.args[1]).float()
        if int(wdq.args[3]) != 0 or w_q.dtype != torch.int8:
            raise ValueError(f"{conv.name}: weights must be int8 per output channel (axis 0)")
        bias = _attr(self.gm, args[2])
        static = {
            "stride": tuple(args[3] or (1, 1)),
            "padding": tuple(args[4] or (0, 0)),
            "dilation": tuple(args[5] or (1, 1)),
            "groups": int(args[6] or 1),
        }
        for k in ("stride", "padding", "dilation"):
            if len(static[k]) == 1:
                static[k] = static[k] * 2
        return x, w_q.clone(), w_scale.clone(), bias, static

    def _conv(self, conv: fx.Node, out: _QValue | None, relu: bool) -> str:
        x, w_q, w_scale, bias, static = self._conv_parts(conv)
        acc_scale = x.scale * w_scale.double()  # float64, exact product of two float32
        tensors: dict[str, torch.Tensor] = {"weight": w_q, "weight_scale": w_scale}
        if bias is not None:
            tensors["bias"] = int_ops.quantize_bias(bias.detach(), acc_scale)
        in_qmax = 32767 if x.dtype == "int16" else 127
        bound = int_ops.acc_bound(w_q, in_qmax, tensors.get("bias"))
        if bound > int_ops.INT32_MAX:
            # only with degenerate scales (an uncalibrated model): reported, not fatal
            self.warnings.append(f"{conv.name}: worst-case accumulator {bound} exceeds int32")
        if out is None:  # int32 output: the accumulator itself, scale s_in * s_w[c]
            tensors["scale"] = acc_scale
            return self._emit(conv.name, "conv2d", [x], "int32", tensors, relu=relu, **static)
        m, n = int_ops.quantize_multiplier(
            acc_scale / out.scale, self.rules.multiplier_bits, self.rules.max_shift
        )
        tensors.update(multiplier=m, shift=n, scale=self._scale_t(out.scale))
        return self._emit(conv.name, "conv2d", [x], out.dtype, tensors, relu=relu, **static)

    def _add(self, add: fx.Node, out: _QValue, relu: bool) -> str:
        a, b = self._dq(add.args[0], add), self._dq(add.args[1], add)
        ra = torch.tensor(a.scale / out.scale, dtype=torch.float64)
        rb = torch.tensor(b.scale / out.scale, dtype=torch.float64)
        ma, mb, n = int_ops.add_multipliers(
            ra, rb, self.rules.multiplier_bits, self.rules.max_shift
        )
        return self._emit(
            add.name,
            "add",
            [a, b],
            out.dtype,
            {"multiplier_a": ma, "multiplier_b": mb, "shift": n, "scale": self._scale_t(out.scale)},
            relu=relu,
        )

    def _same_scale(self, node: fx.Node, kind: str, args: list[Any], out: _QValue) -> str:
        ins = [self._dq(a, node) for a in args]
        for v in ins:
            if v.scale != out.scale or v.dtype != out.dtype:
                raise ValueError(
                    f"{node.name} ({kind}): input {v.name} has scale {v.scale} {v.dtype}, output "
                    f"{out.scale} {out.dtype}; {kind} must keep its input's scale (quantizer rule)"
                )
        static: dict[str, Any] = {}
        if kind == "max_pool2d":
            a = list(node.args) + [None] * (6 - len(node.args))
            k = tuple(a[1])
            static = {
                "kernel_size": k * 2 if len(k) == 1 else k,
                "stride": tuple(a[2]) if a[2] else (k * 2 if len(k) == 1 else k),
                "padding": tuple(a[3] or (0, 0)),
                "dilation": tuple(a[4] or (1, 1)),
                "ceil_mode": bool(a[5] or False),
            }
            for key in ("stride", "padding", "dilation"):
                if len(static[key]) == 1:
                    static[key] = static[key] * 2
        elif kind == "upsample_nearest2d":
            if node.target != torch.ops.aten.upsample_nearest2d.vec:
                raise ValueError(f"{node.name}: only upsample_nearest2d.vec is supported")
            size, factors = node.args[1], node.args[2]
            static = {
                "output_size": None if size is None else tuple(int(s) for s in size),
                "scale_factors": None if factors is None else tuple(float(f) for f in factors),
            }
        elif kind == "cat":
            dim = int(node.args[1]) if len(node.args) > 1 else 0
            static = {"dim": dim}
        return self._emit(
            node.name, kind, ins, out.dtype, {"scale": self._scale_t(out.scale)}, **static
        )

    # -- driver ------------------------------------------------------------------------------

    def run(self, dequant_output: bool) -> IntegerModel:
        outputs: list[str] = []
        for node in self.gm.graph.nodes:
            if node.op == "call_function" and node.target == Q_PT:
                self.values[node] = self.quantize_node(node)
            elif node.op == "call_function" and node.target == DQ_PT:
                src = node.args[0]
                if src not in self.values:
                    raise ValueError(f"{node.name}: dequantize of an unknown value")
                v = self.values[src]
                if _scalar(self.gm, node.args[1]) != v.scale:
                    raise ValueError(f"{node.name}: dequantize scale differs from its quantize")
                self.values[node] = v
            elif node.op == "output":
                for arg in node.args[0]:
                    outputs.append(self._output(arg))
        model = IntegerModel(self.ops, self.tensors, outputs, dequant_output=dequant_output)
        model.warnings = list(self.warnings)
        return model

    def _output(self, arg: Any) -> str:
        if isinstance(arg, fx.Node) and arg in self.values:
            return self.values[arg].name
        if isinstance(arg, fx.Node) and arg.op == "call_function":
            relu = op_name(arg) == "relu"
            core = arg.args[0] if relu else arg
            if isinstance(core, fx.Node) and op_name(core) == "conv2d":
                self.source = arg.name
                return self._conv(core, None, relu)
        raise ValueError(
            f"cannot lower body output {getattr(arg, 'name', arg)}: outputs must be "
            "quantized tensors or the accumulator of a final conv"
        )


def lower_to_integer(
    converted: fx.GraphModule, rules: QuantRules, dequant_output: bool = True
) -> IntegerModel:
    """The integer model equivalent to a ``convert_pt2e`` output (see the module docstring)."""
    return _Lowerer(converted, rules).run(dequant_output)
