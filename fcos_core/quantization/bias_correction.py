"""Empirical bias correction: after calibration, each conv's mean output matches the float model.

Rounding a conv's weights to int8 shifts the mean of its output: for output channel ``c`` by
``sum_k (w_q - w)[c, k] * E[x_k]``. The shift does not average out when the input has a large
mean -- a dark fluorescence image is almost constant, and the first conv then mostly sees its
DC component -- and clipping an upstream activation at its calibrated range shifts the means
downstream too. Such shifts are the same on every image and add up through the network. The
empirical bias correction of Nagel et al. ("Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019, section 4.2; OpenVINO's NNCF and Qualcomm's AIMET ship the
same) removes them: per output channel, the mean difference between the quantized and the
float conv output (before a fused ReLU) over some calibration images is subtracted from the
conv's bias.

The correction is sequential, in graph order: a conv is measured with every conv upstream of
it already corrected, so what it removes is the shift still left at that point. All images go
through the graph at once (an fx Interpreter that stops at each conv), so the memory is that of
one forward pass over all of them. A conv whose weights serve several inputs (the FCOS head's
towers, shared by the pyramid levels) has one bias for all of its uses: its shift is the mean
over all of them, known only when the last has run, so it is applied after the pass, and the
pass is repeated as often as such convs follow one another (the head's tower depth): each
pass makes the next shared conv in the chain exact. The float reference is the same graph
with every fake-quant off (the BN-folded float model). Only the bias parameters change: the
state dict keeps its keys, and the corrected biases are what QAT starts from and the integer
model uses. A conv without a bias is left as it is and counted in the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import fx, nn

from fcos_core.graph_names import module_path
from fcos_core.quantization.bias_quant import fake_quantize_bias
from fcos_core.quantization.prepare import PreparedBody, float_view

_CONV = torch.ops.aten.conv2d.default
_DIMS = (0, 2, 3)  # a conv output is [N, C, H, W]: the statistics are per channel


@attrs.frozen
class ConvShift:
    """What the correction did to one conv.

    Attributes:
        layer: the conv's module path (as the quantization report names it).
        max_shift: the largest bias change over its output channels, relative to the RMS of
            the layer's float output (all channels; a single channel's spread can be ~0 where
            a ReLU keeps it at 0): 0.1 is a tenth of the typical output value.
        uses: how many times the graph runs this conv (the pyramid levels of a shared head
            conv; 1 otherwise).
    """

    layer: str
    max_shift: float
    uses: int = 1


@attrs.frozen
class BiasCorrectionResult:
    """Attributes:
    images: how many images the means were measured on.
    corrected: one :class:`ConvShift` per corrected conv, in graph order.
    skipped: module paths of the convs without a bias (nothing to correct).
    passes: how many passes over the images the shared convs needed.
    """

    images: int
    corrected: tuple[ConvShift, ...]
    skipped: tuple[str, ...]
    passes: int = 1

    def largest(self, k: int = 5) -> list[ConvShift]:
        """The ``k`` convs whose bias moved most, relative to their output's RMS."""
        return sorted(self.corrected, key=lambda s: -s.max_shift)[:k]


def _graph_module(model: nn.Module) -> fx.GraphModule:
    body = getattr(model, "body", model)
    if isinstance(body, PreparedBody):
        return body.graph_module
    if isinstance(body, fx.GraphModule):
        return body
    raise TypeError(
        "bias correction needs a calibrated model (Float2Calibration's prepared graph), "
        f"got {type(body).__name__}"
    )


def _bias_param(gm: fx.GraphModule, conv: fx.Node) -> tuple[fx.Node, nn.Parameter] | None:
    """The bias fake-quant node of ``conv`` and the parameter behind it; None without a bias."""
    fq_bias = conv.args[2] if len(conv.args) > 2 else None
    if not isinstance(fq_bias, fx.Node):
        return None
    if fq_bias.op != "call_function" or fq_bias.target is not fake_quantize_bias:
        raise ValueError(f"conv {conv.name}: its bias is not quantized by fake_quantize_bias")
    source = fq_bias.args[0]
    if not isinstance(source, fx.Node) or source.op != "get_attr":
        raise ValueError(f"conv {conv.name}: its bias is not a parameter of the graph")
    return fq_bias, gm.get_parameter(str(source.target))


class _Group:
    """The uses of one bias parameter (one conv module; several nodes when it is shared)."""

    def __init__(self, param: nn.Parameter, layer: str) -> None:
        self.param = param
        self.layer = layer
        self.bias_nodes: dict[fx.Node, fx.Node] = {}  # conv node -> its bias fake-quant node
        self.float_sq: torch.Tensor | float = 0.0  # sum of squares over all uses
        self.count = 0  # values per channel over all uses
        self.shift_sum: torch.Tensor | float = 0.0  # quantized - float, this pass (shared)
        self.float_mean_of: dict[fx.Node, torch.Tensor] = {}

    @property
    def shared(self) -> bool:
        return len(self.bias_nodes) > 1


class _FloatStats(fx.Interpreter):
    """Per conv node: the mean of each output channel; per group: sums for the spread."""

    def __init__(self, gm: fx.GraphModule, group_of: dict[fx.Node, _Group]) -> None:
        super().__init__(gm)
        self.group_of = group_of
        self.sum: dict[fx.Node, torch.Tensor] = {}
        self.count: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        group = self.group_of.get(n)
        if group is not None:
            y = out.detach()
            count = y.numel() // y.shape[1]
            self.sum[n] = self.sum.get(n, 0) + y.sum(_DIMS, dtype=torch.float64)
            self.count[n] = self.count.get(n, 0) + count
            group.float_sq = group.float_sq + y.square().sum(dtype=torch.float64)
            group.count += count
        return out


class _Correcting(fx.Interpreter):
    """One pass of the quantized graph over all images. At a conv of its own bias: moves the
    bias so its channel means equal the float ones and recomputes the conv with it. At a use
    of a shared conv: adds its mean shift to the group's, for :meth:`apply_shared`."""

    def __init__(self, gm: fx.GraphModule, group_of: dict[fx.Node, _Group]) -> None:
        super().__init__(gm)
        self.group_of = group_of

    def _value(self, a: Any) -> Any:
        # the Interpreter frees a value after its last use: a get_attr read only by the bias
        # fake-quant is gone when the conv runs, so attributes are read afresh
        if isinstance(a, fx.Node):
            if a in self.env:
                return self.env[a]
            if a.op == "get_attr":
                return self.fetch_attr(str(a.target))
            raise RuntimeError(f"bias correction: {a.name} is no longer available")
        return a

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        group = self.group_of.get(n)
        if group is None:
            return out
        # reduced in float64 without a float64 copy of the output (all images at once)
        shift = out.detach().mean(_DIMS, dtype=torch.float64) - group.float_mean_of[n]
        if group.shared:
            group.shift_sum = group.shift_sum + shift * (out.numel() // out.shape[1])
            return out
        with torch.no_grad():
            group.param.sub_(shift.to(group.param.dtype))
        bias = fake_quantize_bias(*(self._value(a) for a in group.bias_nodes[n].args))
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args = (*args[:2], bias, *args[3:])
        return n.target(*args, **kwargs)  # type: ignore[operator]

    @staticmethod
    def apply_shared(groups: Sequence[_Group]) -> None:
        with torch.no_grad():
            for group in groups:
                if group.shared:
                    shift = group.shift_sum / group.count
                    group.param.sub_(torch.as_tensor(shift).to(group.param.dtype))
                    group.shift_sum = 0.0


def _shared_chain_depth(gm: fx.GraphModule, group_of: dict[fx.Node, _Group]) -> int:
    """The most shared convs on one path through the graph (the passes exactness needs)."""
    depth: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        d = max((depth.get(a, 0) for a in n.all_input_nodes), default=0)
        group = group_of.get(n)
        depth[n] = d + 1 if group is not None and group.shared else d
    return max(depth.values(), default=0)


def correct_biases(model: nn.Module, images: Sequence[torch.Tensor]) -> BiasCorrectionResult:
    """Correct the conv biases of a calibrated model (observers frozen, fake-quant on).

    Args:
        model: a model whose body is a :class:`PreparedBody` (or the GraphModule itself), in
            the state :func:`~fcos_core.quantization.converters.freeze_observers` leaves.
        images: image batches ``[N, 3, H, W]`` at the prepared input size; all of them go
            through the graph together.

    Returns:
        what was corrected; the model's bias parameters are changed in place.
    """
    if not images:
        raise ValueError("bias correction needs at least one image batch")
    gm = _graph_module(model)
    convs = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == _CONV]
    groups: dict[int, _Group] = {}
    group_of: dict[fx.Node, _Group] = {}
    skipped: list[str] = []
    for conv in convs:
        found = _bias_param(gm, conv)
        if found is None:
            skipped.append(module_path(conv) or conv.name)
            continue
        fq_bias, param = found
        group = groups.setdefault(id(param), _Group(param, module_path(conv) or conv.name))
        group.bias_nodes[conv] = fq_bias
        group_of[conv] = group
    before = {key: g.param.detach().clone() for key, g in groups.items()}
    passes = max(1, _shared_chain_depth(gm, group_of))

    was_training = [(m, m.training) for m in gm.modules()]
    for m, _ in was_training:
        m.training = False  # eval: the integer-exact values, as validation and deployment
    try:
        with torch.no_grad():
            stats = _FloatStats(gm, group_of)
            with float_view(gm):
                for batch in images:
                    stats.run(batch)
            for conv, group in group_of.items():
                group.float_mean_of[conv] = stats.sum[conv] / stats.count[conv]
            stacked = torch.cat(list(images))
            for _ in range(passes):
                runner = _Correcting(gm, group_of)
                runner.run(stacked)
                runner.apply_shared(list(groups.values()))
    finally:
        for m, mode in was_training:
            m.training = mode
    corrected = []
    for key, group in groups.items():
        rms = (torch.as_tensor(group.float_sq) / (group.count * group.param.numel())).sqrt()
        shift = (before[key] - group.param.detach()).double()
        ratio = shift.abs().max() / rms.clamp_min(1e-12)
        corrected.append(ConvShift(group.layer, float(ratio), len(group.bias_nodes)))
    n_images = sum(int(b.shape[0]) for b in images)
    return BiasCorrectionResult(n_images, tuple(corrected), tuple(skipped), passes)
