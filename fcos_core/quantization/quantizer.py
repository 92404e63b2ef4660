"""The PT2E ``Quantizer`` that annotates an exported fcos body according to :class:`QuantRules`.

Every tensor that flows between supported ops gets exactly one quantization point: a node's
output spec is chosen once and each consumer's input edge reuses that same spec object, which
torchao then shares (one fake-quant per tensor, no hidden requantization). What the rules
control:

* the graph input: fixed scale (``input_scale``), never observed;
* conv2d: per-output-channel symmetric int8 weights, activation-dtype output; the bias stays
  float in the Q/DQ graph and becomes int32 in the integer lowering;
* a ReLU that is a conv's or an add's only user is fused (``fuse_relu``): one quantization
  point after it;
* ``same_scale_ops`` (max-pool, nearest upsample, a lone ReLU): output shares the input's scale;
* ``shared_input_scale_ops`` (concat): all inputs and the output share the first input's scale;
* add: each input keeps its scale (the integer add rescales), unless ``add_inputs_share_scale``;
* body outputs: ``output_dtype`` (int16 for the FCOS head's ``int16_output``), or no
  quantization after the last conv (the int32 accumulator is dequantized).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)

from fcos_core.graph_names import module_path, op_name
from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.observers import FixedRangeObserver, PerChannelAbsMaxObserver, qrange
from fcos_core.quantization.precision import LayerPrecision, QuantPoint, resolve_layer_precision
from fcos_core.quantization.rules import QuantRules

_DTYPES = {"int8": torch.int8, "int16": torch.int16}
_DTYPE_NAME = {v: k for k, v in _DTYPES.items()}


def is_tensor_node(node: Any) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get("val"), torch.Tensor)


def act_spec(dtype: torch.dtype, observer: Callable[..., Any]) -> QuantizationSpec:
    """Per-tensor symmetric activation spec whose fake-quant wraps ``observer``."""
    lo, hi = qrange(dtype)
    return QuantizationSpec(
        dtype=dtype,
        quant_min=lo,
        quant_max=hi,
        qscheme=torch.per_tensor_symmetric,
        is_dynamic=False,
        observer_or_fake_quant_ctr=FcosFakeQuantize.with_args(observer=observer),
    )


def weight_spec(dtype: torch.dtype = torch.int8) -> QuantizationSpec:
    """Per-output-channel (axis 0) symmetric weight spec; the range follows the current weight."""
    lo, hi = qrange(dtype)
    return QuantizationSpec(
        dtype=dtype,
        quant_min=lo,
        quant_max=hi,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=FcosFakeQuantize.with_args(
            observer=PerChannelAbsMaxObserver, ch_axis=0
        ),
    )


class FcosQuantizer(Quantizer):
    """Annotate an exported (and BN-folded) graph for ``prepare_pt2e``.

    Args:
        rules: the target's :class:`QuantRules`.
        activation_observer: observer constructor for activations (e.g. ``MSEObserver``, or
            ``MinMaxObserver.with_args(averaging_constant=0.01)`` for QAT).
        output_dtype: "int8" | "int16" | "int32" for the body's outputs.
        layer_precision: mixed-precision rules (:mod:`fcos_core.quantization.precision`):
            conv/add outputs of the layers they name get their activation dtype. Resolved
            against the graph in :meth:`annotate` (a FcosUserError for a pattern that matches
            nothing or conflicting rules); the result is :attr:`layer_dtypes`.
    """

    def __init__(
        self,
        rules: QuantRules,
        activation_observer: Callable[..., Any],
        output_dtype: str,
        layer_precision: tuple[LayerPrecision, ...] = (),
    ) -> None:
        super().__init__()
        if output_dtype not in ("int8", "int16", "int32"):
            raise ValueError(f"output_dtype: must be int8, int16 or int32, got {output_dtype!r}")
        self.rules = rules
        self.layer_precision = tuple(layer_precision)
        self.activation_observer = activation_observer
        #: {layer name: activation dtype} of every quantization point a rule set (after annotate)
        self.layer_dtypes: dict[str, str] = {}
        self.layer_names: dict[str, str] = {}
        self._node_dtype: dict[fx.Node, str] = {}
        act_dtype = _DTYPES[rules.activation_dtype]
        self.act = act_spec(act_dtype, activation_observer)
        self._acts = {rules.activation_dtype: self.act}
        self.input = act_spec(
            _DTYPES[rules.input_dtype], FixedRangeObserver.with_args(scale=rules.input_scale)
        )
        self.weight = weight_spec(_DTYPES[rules.weight_dtype])
        if output_dtype == "int32":
            self.output: QuantizationSpec | None = None
        elif output_dtype == rules.activation_dtype:
            self.output = self.act
        else:
            self.output = act_spec(_DTYPES[output_dtype], activation_observer)

    # -- helpers -----------------------------------------------------------------------------

    def _act_for(self, node: fx.Node) -> QuantizationSpec:
        """The activation spec of the quantization point after ``node`` (a rule's dtype)."""
        dtype = self._node_dtype.get(node, self.rules.activation_dtype)
        if dtype not in self._acts:
            self._acts[dtype] = act_spec(_DTYPES[dtype], self.activation_observer)
        return self._acts[dtype]

    def quant_points(self, model: fx.GraphModule) -> list[tuple[fx.Node, QuantPoint]]:
        """The conv/add quantization points of ``model`` as the precision rules see them
        (``(node whose output is quantized, QuantPoint)``), in graph order."""
        marker = object()
        points = []
        for node in model.graph.nodes:
            if (
                node.op != "call_function"
                or not is_tensor_node(node)
                or op_name(node) not in ("conv2d", "add")
            ):
                continue
            relu = self._fusable_relu(node)
            last = relu if relu is not None else node
            names = [n for n in dict.fromkeys((module_path(node), module_path(last))) if n]
            if not names:
                names = [node.name]
            out = self._out(last, marker)
            fixed = None if out is marker else ("int32" if out is None else _DTYPE_NAME[out.dtype])
            points.append(
                (
                    last,
                    QuantPoint(
                        key=last.name,
                        names=tuple(names),
                        default=self.rules.activation_dtype,
                        fixed=fixed,
                    ),
                )
            )
        return points

    def _resolve_precision(self, model: fx.GraphModule) -> None:
        found = self.quant_points(model)
        #: {graph node name: layer name} of every conv/add quantization point (the integer
        #: model's ops keep the node name as ``source``; backends name layers with this)
        self.layer_names = {}
        for last, p in found:
            self.layer_names[last.name] = p.names[0]
            core = last.args[0] if op_name(last) == "relu" else last
            if isinstance(core, fx.Node):
                self.layer_names[core.name] = p.names[0]
        if not self.layer_precision:
            return
        by_key = {p.key: (n, p) for n, p in found}
        chosen = resolve_layer_precision(self.layer_precision, [p for _, p in found])
        self._node_dtype = {by_key[k][0]: d for k, d in chosen.items()}
        self.layer_dtypes = {by_key[k][1].names[0]: d for k, d in chosen.items()}

    def _out(
        self, node: fx.Node, default: QuantizationSpecBase | None
    ) -> QuantizationSpecBase | None:
        feeds_output = any(u.op == "output" for u in node.users)
        if not feeds_output:
            return default
        if self.output is None and len(node.users) > 1:
            # an int32 accumulator output that other ops also read must be quantized for them
            return default
        return self.output

    @staticmethod
    def _annotate(
        node: fx.Node,
        inputs: dict[fx.Node, QuantizationSpecBase | None],
        output: QuantizationSpecBase | None,
    ) -> None:
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={k: v for k, v in inputs.items() if v is not None},
            output_qspec=output,
            _annotated=True,
        )

    def _input_of(self, spec_of: dict[fx.Node, Any], node: fx.Node, arg: Any) -> Any:
        if not is_tensor_node(arg):
            raise ValueError(
                f"{op_name(node)} node {node.name}: input {arg!r} is not a tensor; "
                "fcos integer ops take tensors only (fold constants into a conv)"
            )
        if arg not in spec_of:
            raise ValueError(
                f"{op_name(node)} node {node.name}: input {arg.name} "
                f"({arg.op} {getattr(arg, 'target', '')}) is not quantized"
            )
        return spec_of[arg]

    # -- Quantizer API -----------------------------------------------------------------------

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        rules = self.rules
        self._resolve_precision(model)
        spec_of: dict[fx.Node, Any] = {}
        fused: set[fx.Node] = set()
        for node in model.graph.nodes:
            if node.op == "placeholder":
                if is_tensor_node(node):
                    self._annotate(node, {}, self.input)
                    spec_of[node] = self.input
                continue
            if node.op != "call_function" or node in fused or not is_tensor_node(node):
                continue
            name = op_name(node)
            if name not in rules.supported_ops:
                raise ValueError(
                    f"op {name} (node {node.name}) is not supported by the target's "
                    f"quantization rules; supported: {sorted(rules.supported_ops)}"
                )
            relu = self._fusable_relu(node) if name in ("conv2d", "add") else None
            last = relu if relu is not None else node
            if name == "conv2d":
                x, w = node.args[0], node.args[1]
                if not (isinstance(w, fx.Node) and w.op == "get_attr"):
                    raise ValueError(f"conv2d node {node.name}: weight must be a parameter")
                inputs = {x: self._input_of(spec_of, node, x), w: self.weight}
                out = self._out(last, self._act_for(last))
            elif name == "add":
                a, b = node.args[0], node.args[1]
                if len(node.args) > 2 or node.kwargs.get("alpha", 1) != 1:
                    raise ValueError(f"add node {node.name}: alpha != 1 is not supported")
                sa = self._input_of(spec_of, node, a)
                sb = self._input_of(spec_of, node, b)
                if rules.add_inputs_share_scale:
                    sb = SharedQuantizationSpec((a, node))
                inputs = {a: sa, b: sb}
                out = self._out(last, self._act_for(last))
            elif name in rules.shared_input_scale_ops:
                tensors = list(node.args[0])
                first = tensors[0]
                inputs = {first: self._input_of(spec_of, node, first)}
                for t in tensors[1:]:
                    self._input_of(spec_of, node, t)
                    inputs[t] = SharedQuantizationSpec((first, node))
                out = SharedQuantizationSpec((first, node))
            elif name in rules.same_scale_ops:
                x = node.args[0]
                inputs = {x: self._input_of(spec_of, node, x)}
                out = SharedQuantizationSpec((x, node))
            else:
                raise ValueError(f"op {name} (node {node.name}) has no quantization rule")
            if relu is not None:
                self._annotate(node, inputs, None)
                self._annotate(relu, {}, out)
                fused.add(relu)
                spec_of[relu] = out
            else:
                self._annotate(node, inputs, out)
                spec_of[node] = out
        return model

    def _fusable_relu(self, node: fx.Node) -> fx.Node | None:
        if not self.rules.fuse_relu or len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op == "call_function" and op_name(user) == "relu":
            return user
        return None

    def validate(self, model: fx.GraphModule) -> None:
        pass
