"""Integer-exact fake quantization: the prepared graph computes what the integer model computes.

A plain fake-quant graph rounds ``float32(conv(x_q, w_q) + b) * float32(1 / s_out)`` half to
even. The integer model (:mod:`fcos_core.quantization.int_ops`) rounds the exact int64
accumulator times an integer multiplier, half up. The two differ by one step on a small share
of elements, and in a deep network those steps compound: on a trained FCOS-B0 only ~0.4% of
the int16 head outputs agreed within one step. So after every activation fake-quant whose value
an integer op *computes* (conv, add, requantize) this pass inserts an
:class:`IntegerExactOutput` node that recomputes the value the way the integer op does, from
the integers the fake-quant graph already holds:

* conv2d [+ fused ReLU]: ``k_x = round(x_q / s_in)`` (exact: ``x_q`` is ``float32(k * s)``),
  weights and bias quantized with the formulas ``convert_pt2e`` and the lowering use, the exact
  accumulator (:func:`int_ops.conv2d_acc`), then :func:`int_ops.requantize` with the
  lowering's multiplier and shift;
* add [+ fused ReLU]: :func:`int_ops.add` with the lowering's two multipliers and one shift;
* a fake-quant reading another fake-quant (a rescale): :func:`int_ops.requantize`;
* a body output taken straight from a conv's accumulator (int32 output): the exact
  accumulator times its per-channel scale, as the integer model dequantizes it.

Same-scale ops (max-pool, nearest upsample, concat, a lone ReLU) and the input quantization
already agree exactly and get no node. The forward value is the integer one; the gradient is
the fake-quant's (straight-through), so the node can also run in training (``mode="always"``);
by default (``"eval"``) it runs when the model is not training: validation, prediction and the
quantization report measure what will be deployed, and a QAT step costs no extra conv.

The nodes hold no state (no state-dict keys) and are removed before ``convert_pt2e``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from fcos_core.graph_names import op_name
from fcos_core.quantization import int_ops
from fcos_core.quantization.bias_quant import fake_quantize_bias
from fcos_core.quantization.fake_quantize import FcosFakeQuantize

EXACT_MODES = ("eval", "always", "off")


class _StraightThrough(torch.autograd.Function):
    """Forward: the integer value; backward: the gradient goes to the fake-quant value."""

    @staticmethod
    def forward(ctx: Any, y_fq: torch.Tensor, y_exact: torch.Tensor) -> torch.Tensor:
        return y_exact

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _ints(value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The integers behind a fake-quantized tensor (``float32(k * s)`` -> ``k``), as float64;
    per-channel ``scale`` is on dim 1."""
    s = scale.detach().double()
    if s.numel() > 1:
        s = s.reshape(1, -1, 1, 1)
    return torch.round(value.detach().double() / s)


class IntegerExactOutput(nn.Module):
    """Recomputes one fake-quantized value with the integer op's arithmetic.

    Args:
        kind: ``conv`` | ``add`` | ``requantize`` | ``conv_acc`` (int32 body output).
        qmin, qmax: the output's integer range (unused for ``conv_acc``).
        relu: the op has a fused ReLU (lower bound 0).
        multiplier_bits, max_shift: the target's requantization rules (:class:`QuantRules`).
        conv: conv static arguments (``stride``, ``padding``, ``dilation``, ``groups``).
        weight_qrange: (qmin, qmax) of the conv weights.
        mode: ``eval`` (active when not training), ``always`` or ``off``.

    ``forward(y_fq, enabled, *operands)``: ``y_fq`` the fake-quant output this node stands for,
    ``enabled`` that fake-quant's ``fake_quant_enabled`` flag (off: the float value passes),
    operands by kind:

    * conv: ``x_q, s_in, weight (float), s_w, bias (float or None), s_out``
    * conv_acc: ``x_q, s_in, weight (float), s_w, bias (float or None)``
    * add: ``a_q, s_a, b_q, s_b, s_out``
    * requantize: ``x_q, s_in, s_out``
    """

    def __init__(
        self,
        kind: str,
        qmin: int,
        qmax: int,
        relu: bool,
        multiplier_bits: int,
        max_shift: int,
        conv: dict[str, Any] | None = None,
        weight_qrange: tuple[int, int] = (-128, 127),
        mode: str = "eval",
    ) -> None:
        super().__init__()
        if kind not in ("conv", "add", "requantize", "conv_acc"):
            raise ValueError(f"kind: {kind!r}")
        if mode not in EXACT_MODES:
            raise ValueError(f"mode: {mode!r}; use one of {EXACT_MODES}")
        self.kind = kind
        self.qmin, self.qmax = int(qmin), int(qmax)
        self.relu = bool(relu)
        self.multiplier_bits = int(multiplier_bits)
        self.max_shift = int(max_shift)
        self.conv = dict(conv or {})
        self.weight_qrange = (int(weight_qrange[0]), int(weight_qrange[1]))
        self.mode = mode

    def active(self, enabled: torch.Tensor) -> bool:
        if self.mode == "off" or int(enabled[0]) == 0:
            return False
        return self.mode == "always" or not self.training

    def forward(self, y_fq: torch.Tensor, enabled: torch.Tensor, *operands: Any) -> torch.Tensor:
        if not self.active(enabled):
            return y_fq
        with torch.no_grad():
            q, scale = self._integer(*operands)
            y = int_ops.dequantize(q, scale).to(y_fq.dtype)
        if y_fq.requires_grad and torch.is_grad_enabled():
            return _StraightThrough.apply(y_fq, y)
        return y

    # -- the integer ops -----------------------------------------------------------------------

    def _weight_ints(self, weight: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
        # the formula of quantized_decomposed.quantize_per_channel, which convert_pt2e applies
        lo, hi = self.weight_qrange
        zp = torch.zeros(s_w.numel(), dtype=torch.int64)
        return torch.ops.quantized_decomposed.quantize_per_channel(
            weight.detach().float(), s_w.detach().reshape(-1).float(), zp, 0, lo, hi, torch.int8
        )

    def _integer(self, *ops: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind in ("conv", "conv_acc"):
            x_q, s_in, weight, s_w, bias = ops[:5]
            s_in64 = s_in.detach().double().reshape(())
            s_w32 = s_w.detach().float().reshape(-1)
            acc_scale = s_in64 * s_w32.double()  # exact product of two float32
            w_q = self._weight_ints(weight, s_w32)
            b_q = None if bias is None else int_ops.quantize_bias(bias.detach(), acc_scale)
            c = self.conv
            acc = int_ops.conv2d_acc(
                _ints(x_q, s_in64), w_q, b_q, c["stride"], c["padding"], c["dilation"], c["groups"]
            )
            if self.kind == "conv_acc":
                lo, hi = int_ops.INT32_MIN, int_ops.INT32_MAX
                q = (acc.clamp_min(0) if self.relu else acc).clamp(lo, hi)
                return q, acc_scale
            s_out = ops[5].detach().double().reshape(())
            m, n = int_ops.quantize_multiplier(
                acc_scale / s_out, self.multiplier_bits, self.max_shift
            )
            q = int_ops.requantize(acc, m, n, self.qmin, self.qmax, torch.int32, self.relu)
            return q, s_out
        if self.kind == "add":
            a_q, s_a, b_q, s_b, s_out = ops
            s_a64, s_b64 = s_a.detach().double().reshape(()), s_b.detach().double().reshape(())
            s_out64 = s_out.detach().double().reshape(())
            ma, mb, n = int_ops.add_multipliers(
                s_a64 / s_out64, s_b64 / s_out64, self.multiplier_bits, self.max_shift
            )
            q = int_ops.add(
                _ints(a_q, s_a64).long(),
                _ints(b_q, s_b64).long(),
                ma,
                mb,
                n,
                self.qmin,
                self.qmax,
                torch.int32,
                self.relu,
            )
            return q, s_out64
        x_q, s_in, s_out = ops
        s_in64, s_out64 = s_in.detach().double().reshape(()), s_out.detach().double().reshape(())
        m, n = int_ops.quantize_multiplier(s_in64 / s_out64, self.multiplier_bits, self.max_shift)
        q = int_ops.requantize(_ints(x_q, s_in64).long(), m, n, self.qmin, self.qmax, torch.int32)
        return q, s_out64

    def extra_repr(self) -> str:
        return f"kind={self.kind}, relu={self.relu}, mode={self.mode}"


# -- the graph pass --------------------------------------------------------------------------


def _fq_target(gm: fx.GraphModule, node: Any) -> str | None:
    """The module name when ``node`` calls an activation/weight :class:`FcosFakeQuantize`."""
    if (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(gm.get_submodule(str(node.target)), FcosFakeQuantize)
    ):
        return str(node.target)
    return None


def _quantized_input(gm: fx.GraphModule, node: Any) -> str | None:
    """The fake-quant module whose value ``node`` is: a fake-quant node itself, or an
    :class:`IntegerExactOutput` node already standing for one (the pass rewires consumers to
    those as it goes, so a later op's inputs are often exact nodes)."""
    if (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(gm.get_submodule(str(node.target)), IntegerExactOutput)
    ):
        node = node.args[0]
    return _fq_target(gm, node)


def _op(node: Any) -> str:
    if not (isinstance(node, fx.Node) and node.op == "call_function"):
        return ""
    return op_name(node)


def _conv_static(conv: fx.Node) -> dict[str, Any]:
    a = list(conv.args) + [None] * (7 - len(conv.args))

    def pair(v: Any, default: tuple[int, int]) -> tuple[int, int]:
        if v is None:
            return default
        v = tuple(int(i) for i in v)
        return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])

    return {
        "stride": pair(a[3], (1, 1)),
        "padding": pair(a[4], (0, 0)),
        "dilation": pair(a[5], (1, 1)),
        "groups": int(a[6] or 1),
    }


def _raw_bias(node: Any) -> Any:
    """The float bias parameter node behind a (possibly fake-quantized) conv bias."""
    if (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target is fake_quantize_bias
    ):
        return node.args[0]
    return node


def _conv_operands(gm: fx.GraphModule, conv: fx.Node) -> list[Any] | None:
    x, w = conv.args[0], conv.args[1]
    x_fq, w_fq = _quantized_input(gm, x), _fq_target(gm, w)
    if x_fq is None or w_fq is None:
        return None
    w_raw = w.args[0]
    bias = _raw_bias(conv.args[2] if len(conv.args) > 2 else None)
    g = gm.graph
    return [x, g.get_attr(f"{x_fq}.scale"), w_raw, g.get_attr(f"{w_fq}.scale"), bias]


def insert_integer_exact(
    gm: fx.GraphModule, multiplier_bits: int, max_shift: int, mode: str = "eval"
) -> int:
    """Insert an :class:`IntegerExactOutput` after every fake-quant an integer op computes
    (see the module docstring); returns how many were inserted."""
    if mode not in EXACT_MODES:
        raise ValueError(f"mode: {mode!r}; use one of {EXACT_MODES}")
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        target = _fq_target(gm, node)
        if target is not None:
            fq = gm.get_submodule(target)
            if getattr(fq, "is_weight", False):
                continue
            spec = _spec_for_fq(gm, node)
            if spec is None:
                continue
            kind, core, relu = spec
            # inserting_before the next node keeps the new nodes in creation order
            with graph.inserting_before(node.next):
                operands = _operands(gm, kind, core, node)
                if operands is None:
                    continue
                count += 1
                name = f"integer_exact_{count}"
                gm.add_submodule(
                    name,
                    IntegerExactOutput(
                        kind,
                        fq.quant_min,
                        fq.quant_max,
                        relu,
                        multiplier_bits,
                        max_shift,
                        conv=_conv_static(core) if kind == "conv" else None,
                        mode=mode,
                    ),
                )
                flag = graph.get_attr(f"{target}.fake_quant_enabled")
                exact = graph.call_module(name, (node, flag, *operands))
            node.replace_all_uses_with(exact, delete_user_cb=lambda u, new=exact: u is not new)
        elif node.op == "output":
            count += _exact_accumulator_outputs(gm, node, multiplier_bits, max_shift, mode, count)
    graph.lint()
    gm.recompile()
    return count


def _spec_for_fq(gm: fx.GraphModule, fq_node: fx.Node) -> tuple[str, fx.Node, bool] | None:
    src = fq_node.args[0]
    if _quantized_input(gm, src) is not None:
        return "requantize", src, False  # type: ignore[return-value]
    relu = _op(src) == "relu"
    core = src.args[0] if relu else src
    if relu and _quantized_input(gm, core) is not None:
        return None  # a lone ReLU on a quantized value: same scale, already exact
    if _op(core) == "conv2d":
        return "conv", core, relu  # type: ignore[return-value]
    if _op(core) == "add":
        return "add", core, relu  # type: ignore[return-value]
    return None


def _operands(gm: fx.GraphModule, kind: str, core: fx.Node, fq_node: fx.Node) -> list[Any] | None:
    g = gm.graph
    s_out = g.get_attr(f"{fq_node.target}.scale")
    if kind == "requantize":
        return [core, g.get_attr(f"{_quantized_input(gm, core)}.scale"), s_out]
    if kind == "conv":
        ops = _conv_operands(gm, core)
        return None if ops is None else [*ops, s_out]
    a, b = core.args[0], core.args[1]
    fa, fb = _quantized_input(gm, a), _quantized_input(gm, b)
    if fa is None or fb is None:
        return None
    return [a, g.get_attr(f"{fa}.scale"), b, g.get_attr(f"{fb}.scale"), s_out]


def _exact_accumulator_outputs(
    gm: fx.GraphModule, out: fx.Node, multiplier_bits: int, max_shift: int, mode: str, offset: int
) -> int:
    """Body outputs that are a conv's int32 accumulator (no fake-quant after the conv)."""
    graph = gm.graph
    count = 0
    new_args = []
    for arg in out.args[0]:
        relu = _op(arg) == "relu"
        core = arg.args[0] if relu else arg
        if _op(core) != "conv2d" or _quantized_input(gm, arg) is not None:
            new_args.append(arg)
            continue
        w_fq = _fq_target(gm, core.args[1])
        with graph.inserting_before(out):
            operands = _conv_operands(gm, core)
            if operands is None or w_fq is None:
                new_args.append(arg)
                continue
            count += 1
            name = f"integer_exact_{offset + count}"
            gm.add_submodule(
                name,
                IntegerExactOutput(
                    "conv_acc",
                    int_ops.INT32_MIN,
                    int_ops.INT32_MAX,
                    relu,
                    multiplier_bits,
                    max_shift,
                    conv=_conv_static(core),
                    mode=mode,
                ),
            )
            flag = graph.get_attr(f"{w_fq}.fake_quant_enabled")
            new_args.append(graph.call_module(name, (arg, flag, *operands)))
    out.args = (type(out.args[0])(new_args), *tuple(out.args[1:]))
    return count


def remove_integer_exact(gm: fx.GraphModule) -> None:
    """Undo :func:`insert_integer_exact` (before ``convert_pt2e``)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(
            gm.get_submodule(str(node.target)), IntegerExactOutput
        ):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    for name, mod in list(gm.named_children()):
        if isinstance(mod, IntegerExactOutput):
            delattr(gm, name)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def exact_node_of(fq_node: fx.Node) -> fx.Node | None:
    """The :class:`IntegerExactOutput` node standing for ``fq_node``'s value, if any."""
    for user in fq_node.users:
        if (
            user.op == "call_module"
            and str(user.target).startswith("integer_exact_")
            and user.args
            and user.args[0] is fq_node
        ):
            return user
    return None
