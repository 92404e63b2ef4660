"""Per-layer quantization sensitivity: which layers lose accuracy, and which int16 recovers it.

One calibration, two graphs: the model is prepared twice from the same float weights -- the
target's default dtypes (``base``, int8) and every conv/add output int16 (``wide``) -- and both
observe the *same* calibration batches (in calibration mode the fake-quants are off, so both
see the float activations). From then on no observer runs; each measurement only switches
fake-quants on or off, or lends one layer the int16 qparams of its twin in ``wide``:

* ``float``: every fake-quant off (the float model, BN folded);
* ``int8``: every fake-quant on (the calibrated model);
* ``only[L]``: only layer L's fake-quants on (its output activation, its weights and hence its
  int32 bias) -> ``loss[L] = metric(float) - metric(only[L])``;
* ``int16[L]``: everything on, layer L's output activation int16 ->
  ``gain[L] = metric(int16[L]) - metric(int8)``.

A *layer* is a conv/add quantization point named as the quantization report and the
``layer_precision`` rules name it (the module path); ``depth`` groups layers by the first
``depth`` parts of that path (``backbone.blocks.3``) so a big model needs fewer evaluations.
The prepared graphs use plain fake-quant (``integer_exact: off``): the ranking needs the
quantization error, not bit-exactness, and plain fake-quant is several times faster.

The suggestion (:func:`suggest`) adds layers by decreasing gain until the predicted loss
``metric(float) - metric(int8) - sum(gain)`` is at most ``max_loss``; :func:`analyse` then
measures that set together, because gains do not add exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import fx, nn

from fcos_core.graph_names import module_path, op_name
from fcos_core.quantization.converters import body_of
from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.prepare import PreparedBody

#: the rule set that makes the ``wide`` twin: every conv/add output int16
ALL_INT16 = ({"layers": ["*"], "activation": "int16"},)


@attrs.frozen
class LayerGroup:
    """One unit of the analysis: its name, the activation fake-quants (module names in the
    prepared graph) of its outputs and the weight fake-quants of its convs."""

    name: str
    activations: tuple[str, ...]
    weights: tuple[str, ...]
    members: tuple[str, ...] = ()  # the layer names in the group (rules name these)


@attrs.define
class LayerResult:
    name: str
    loss: float  # metric(float) - metric(only this layer quantized)
    gain: float  # metric(this layer int16, the rest int8) - metric(int8)
    dtype: str  # the layer's dtype in the base model
    members: list[str] = attrs.field(factory=list)  # layer names (a group has several)


@attrs.define
class SensitivityResult:
    metric_name: str
    float_value: float
    int8_value: float
    layers: list[LayerResult]
    suggested: list[str] = attrs.field(factory=list)
    predicted_loss: float = math.nan
    suggested_value: float | None = None  # measured with the suggested layers int16

    def suggested_layers(self) -> list[str]:
        """The layer names of the suggested groups (what a ``layer_precision`` rule names)."""
        members = {r.name: r.members or [r.name] for r in self.layers}
        return [m for name in self.suggested for m in members[name]]

    def by_loss(self) -> list[LayerResult]:
        return sorted(self.layers, key=lambda r: (-r.loss, r.name))

    def by_gain(self) -> list[LayerResult]:
        return sorted(self.layers, key=lambda r: (-r.gain, r.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "float": self.float_value,
            "int8": self.int8_value,
            "int8_loss": self.float_value - self.int8_value,
            "layers": [attrs.asdict(r) for r in self.by_loss()],
            "suggested_int16": list(self.suggested),
            "suggested_int16_layers": self.suggested_layers(),
            "predicted_loss": self.predicted_loss,
            "suggested_measured": self.suggested_value,
        }


def _prepared(model: nn.Module) -> PreparedBody:
    body = body_of(model)
    if not isinstance(body, PreparedBody):
        raise ValueError("expected a model converted by Float2Calibration (a prepared body)")
    return body


def _fq(gm: fx.GraphModule, node: Any) -> FcosFakeQuantize | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, FcosFakeQuantize):
            return mod
    return None


def layer_groups(model: nn.Module, depth: int | None = None) -> list[LayerGroup]:
    """The conv/add quantization points of a prepared model, grouped by layer name (graph
    order). The network input's fixed-scale quantization is not a layer."""
    body = _prepared(model)
    gm = body.graph_module
    names = dict(body.info.get("layer_names") or {})
    acts: dict[str, list[str]] = {}
    weights: dict[str, list[str]] = {}
    members: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        fq = _fq(gm, node)
        if fq is None or fq.is_weight:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_function":
            continue  # the graph input
        core = src.args[0] if op_name(src) == "relu" else src
        if not (isinstance(core, fx.Node) and op_name(core) in ("conv2d", "add")):
            continue  # a shared-scale op (its fake-quant is its input's)
        layer = names.get(src.name) or module_path(src) or src.name
        name = ".".join(layer.split(".")[:depth]) if depth is not None else layer
        if layer not in members.setdefault(name, []):
            members[name].append(layer)
        target = str(node.target)
        group = acts.setdefault(name, [])
        if target not in group:
            group.append(target)
        if op_name(core) == "conv2d" and len(core.args) > 1:
            w = core.args[1]
            if _fq(gm, w) is not None:
                wl = weights.setdefault(name, [])
                if str(w.target) not in wl:
                    wl.append(str(w.target))
    return [
        LayerGroup(n, tuple(a), tuple(weights.get(n, ())), tuple(members[n]))
        for n, a in acts.items()
    ]


class Switchboard:
    """Sets the fake-quants of a frozen ``base`` model per measurement; ``wide`` (same graph,
    int16 activations, calibrated on the same data) lends its int16 qparams."""

    def __init__(self, base: nn.Module, wide: nn.Module | None) -> None:
        self.gm = _prepared(base).graph_module
        self.fqs = {n: m for n, m in self.gm.named_modules() if isinstance(m, FcosFakeQuantize)}
        self.wide: dict[str, FcosFakeQuantize] = {}
        if wide is not None:
            wgm = _prepared(wide).graph_module
            self.wide = {n: m for n, m in wgm.named_modules() if isinstance(m, FcosFakeQuantize)}
            if set(self.wide) != set(self.fqs):
                raise ValueError("the int16 twin's graph differs from the base graph")
        for fq in self.fqs.values():
            if fq._stale:
                fq.sync_qparams()
            fq.enable_observer(False)
        for fq in self.wide.values():
            if fq._stale:
                fq.sync_qparams()
            fq.enable_observer(False)

    @contextmanager
    def state(self, enabled: Iterable[str] | None, int16: Iterable[str] = ()) -> Iterator[None]:
        """Fake-quant on for ``enabled`` (None: all) and int16 qparams for ``int16``."""
        on = set(self.fqs) if enabled is None else set(enabled)
        saved = {
            n: (
                fq.dtype,
                fq.quant_min,
                fq.quant_max,
                fq.scale.clone(),
                int(fq.fake_quant_enabled[0]),
            )
            for n, fq in self.fqs.items()
        }
        try:
            for n, fq in self.fqs.items():
                fq.enable_fake_quant(n in on)
            for n in int16:
                src = self.wide[n]
                fq = self.fqs[n]
                fq.dtype, fq.quant_min, fq.quant_max = src.dtype, src.quant_min, src.quant_max
                fq.scale = src.scale.clone()
            yield
        finally:
            for n, (dtype, lo, hi, scale, en) in saved.items():
                fq = self.fqs[n]
                fq.dtype, fq.quant_min, fq.quant_max, fq.scale = dtype, lo, hi, scale
                fq.enable_fake_quant(bool(en))


def suggest(
    float_value: float,
    int8_value: float,
    layers: Sequence[LayerResult],
    max_loss: float,
    max_layers: int,
) -> tuple[list[str], float]:
    """Layers to make int16 (by decreasing gain, positive gains only) until the predicted loss
    ``float - int8 - sum(gain)`` is at most ``max_loss`` or ``max_layers`` are chosen;
    returns them and the predicted loss."""
    predicted = float_value - int8_value
    chosen: list[str] = []
    for r in sorted(layers, key=lambda r: (-r.gain, r.name)):
        if predicted <= max_loss or len(chosen) >= max_layers or r.gain <= 0:
            break
        chosen.append(r.name)
        predicted -= r.gain
    return chosen, predicted


def analyse(
    base: nn.Module,
    wide: nn.Module,
    evaluate: Callable[[nn.Module], float],
    metric_name: str = "mAP",
    depth: int | None = None,
    max_loss: float = 0.005,
    max_layers: int = 10,
    progress: Callable[[str], None] | None = None,
) -> SensitivityResult:
    """Measure every layer (group) of the calibrated ``base`` model (see the module doc).

    Args:
        base: a calibrated (observers frozen) model, converted by Float2Calibration.
        wide: the same model converted with :data:`ALL_INT16` and calibrated on the same data.
        evaluate: model -> metric (higher is better), e.g. mAP on a validation subset.
        depth: group layers by the first ``depth`` parts of their names (None: every layer).
        max_loss, max_layers: for :func:`suggest` (``max_loss`` in the metric's units).
        progress: called with a short label after each evaluation.
    Returns:
        the measurements, the suggested int16 layers and their measured metric.
    """
    groups = layer_groups(base, depth)
    board = Switchboard(base, wide)
    base.eval()
    tick = progress or (lambda _label: None)

    def run(enabled: Iterable[str] | None, int16: Iterable[str] = ()) -> float:
        with torch.no_grad(), board.state(enabled, int16):
            return float(evaluate(base))

    float_value = run(())
    tick("float")
    int8_value = run(None)
    tick("int8")
    results = []
    for g in groups:
        only = run((*g.activations, *g.weights))
        int16 = run(None, g.activations)
        dtype = str(board.fqs[g.activations[0]].dtype).replace("torch.", "")
        results.append(
            LayerResult(g.name, float_value - only, int16 - int8_value, dtype, list(g.members))
        )
        tick(g.name)
    res = SensitivityResult(metric_name, float_value, int8_value, results)
    res.suggested, res.predicted_loss = suggest(
        float_value, int8_value, results, max_loss, max_layers
    )
    if res.suggested:
        chosen = [a for g in groups if g.name in set(res.suggested) for a in g.activations]
        res.suggested_value = run(None, chosen)
    return res


def evaluations_needed(model: nn.Module, depth: int | None) -> int:
    """How many evaluations :func:`analyse` reports through ``progress`` (the measurement of
    the suggested set comes on top, when there is one)."""
    return 2 + 2 * len(layer_groups(model, depth))
