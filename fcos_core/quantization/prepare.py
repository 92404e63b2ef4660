"""Export the quantizable body and prepare it with fake-quant modules (PT2E), and switch the
prepared graph between its modes.

Float2Calibration and Float2QAT both call :func:`prepare_body` with the same rules, so their
graphs (and state-dict keys) are identical; only the activation observer class and the mode
differ. Modes:

=========== ================== ================ ==========================================
mode        weight observer    act. observer    fake-quant
=========== ================== ================ ==========================================
calibration on                 on (calibration) off: the float model is observed; the clip
                                                search runs once, when the range is needed
qat         on (current w)     on (EMA min-max) on; ``freeze_activation_scales`` -> act. obs off
frozen      off                off              on (what ``convert_pt2e`` reproduces)
=========== ================== ================ ==========================================

``freeze_observers`` (end of calibration) switches a calibration model to ``frozen``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from fcos_core.quantization.bias_quant import insert_bias_fake_quant
from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.graph_passes import check_no_random_ops, fold_conv_bn, remove_dropout
from fcos_core.quantization.integer_exact import insert_integer_exact
from fcos_core.quantization.quantizer import FcosQuantizer
from fcos_core.quantization.rules import QuantRules

QAT_MODES = ("fuse_bn",)


def export_float(body: torch.nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """``torch.export`` the body in eval mode, with a dynamic batch.

    Args:
        body: module ``img [B, C, H, W] -> tuple of tensors``.
        input_shape: example (B, C, H, W); the batch is exported at >= 2 so it stays dynamic.

    The spatial size is fixed: FCOS-like bodies (a max-pooled map upsampled and added back)
    impose shape relations torch.export cannot solve symbolically. The prepared model accepts
    the config's ``deploy_inputs`` H x W at any batch size; the integer model accepts any size.
    """
    if len(input_shape) != 4:
        raise ValueError(f"example_inputs: expected an image shape (B, C, H, W), got {input_shape}")
    was_training = body.training
    body.eval()
    b, c, h, w = input_shape
    example = torch.zeros(max(2, b), c, h, w, device=_device_of(body))
    try:
        ep = torch.export.export(body, (example,), dynamic_shapes=({0: Dim.AUTO},))
    except Exception as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ValueError(
            f"torch.export of the body failed ({type(exc).__name__}: {first})"
        ) from exc
    finally:
        body.train(was_training)
    return ep.module()


def _device_of(module: torch.nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def prepare_body(
    body: torch.nn.Module,
    input_shape: tuple[int, ...],
    rules: QuantRules,
    activation_observer: Callable[..., Any],
    output_dtype: str,
    qat_mode: str = "fuse_bn",
    integer_exact: str = "eval",
    layer_precision: tuple[Any, ...] = (),
) -> fx.GraphModule:
    """Export ``body``, fold BN, annotate with :class:`FcosQuantizer` and ``prepare_pt2e``.

    Returns the prepared GraphModule (fake-quant modules inserted, weight ranges initialised
    from the current weights, all observers and fake-quants on, biases quantized as the
    integer model quantizes them, and the integer-exact output nodes of
    :mod:`fcos_core.quantization.integer_exact` in ``integer_exact`` mode).
    ``layer_precision`` (:class:`~fcos_core.quantization.precision.LayerPrecision` rules) is
    resolved against the graph before anything is observed; the layers it set are in
    ``prepared.meta["layer_dtypes"]`` (``{layer name: dtype}``); ``meta["layer_names"]`` maps
    the graph node of every conv/add quantization point to its layer (module) name.
    """
    if qat_mode not in QAT_MODES:
        raise ValueError(f"qat_mode: {qat_mode!r} is not supported; use one of {QAT_MODES}")
    gm = export_float(body, input_shape)
    check_no_random_ops(gm)
    remove_dropout(gm)
    fold_conv_bn(gm)
    quantizer = FcosQuantizer(rules, activation_observer, output_dtype, tuple(layer_precision))
    prepared = prepare_pt2e(gm, quantizer)
    prepared.meta["layer_dtypes"] = dict(quantizer.layer_dtypes)
    prepared.meta["layer_names"] = dict(quantizer.layer_names)
    _tag_weight_fake_quants(prepared)
    observe_once(prepared)
    refresh_weight_ranges(prepared)
    insert_bias_fake_quant(prepared)
    insert_integer_exact(prepared, rules.multiplier_bits, rules.max_shift, integer_exact)
    return prepared


class PreparedBody(nn.Module):
    """The prepared (fake-quant) graph of a body, plus what the converters need to know.

    A plain module around the GraphModule because ``copy.deepcopy`` of a GraphModule keeps only
    its graph and parameters: the conversion info (rules, output dtype) and the quantization
    state recorded on this wrapper survive copies (EMA, DDP, ``deepcopy`` in tests). State-dict
    keys are the graph's keys under ``graph_module.``.

    Args:
        graph_module: output of :func:`prepare_body`.
        info: ``rules``, ``output_dtype``, ``dequant_output``, ``qat_mode``, ``input_shape``.
    """

    def __init__(self, graph_module: fx.GraphModule, info: dict[str, Any]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.info = dict(info)

    def forward(self, img: torch.Tensor) -> Any:
        return self.graph_module(img)

    def train(self, mode: bool = True) -> PreparedBody:
        # the graph has no mode-dependent op left (BN folded, dropout removed), and an
        # exported GraphModule refuses .train()/.eval(): set the flags directly
        for m in self.modules():
            m.training = mode
        return self


def _tag_weight_fake_quants(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, FcosFakeQuantize):
            arg = node.args[0]
            mod.is_weight = isinstance(arg, fx.Node) and arg.op == "get_attr"
            mod.weight_target = str(arg.target) if mod.is_weight else None


def observe_once(gm: fx.GraphModule) -> int:
    """Pass ``observe=False`` at every call site of a fake-quant after its first one (see
    :meth:`FcosFakeQuantize.forward`); returns how many sites were changed."""
    seen: set[str] = set()
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            gm.get_submodule(str(node.target)), FcosFakeQuantize
        ):
            continue
        mod_id = str(id(gm.get_submodule(str(node.target))))
        if mod_id in seen:
            node.kwargs = {**node.kwargs, "observe": False}
            changed += 1
        seen.add(mod_id)
    gm.recompile()
    return changed


def strip_observe_flags(gm: fx.GraphModule) -> None:
    """Undo :func:`observe_once` (``convert_pt2e`` expects plain fake-quant calls)."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and "observe" in node.kwargs:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "observe"}
    gm.recompile()


def fake_quants(gm: torch.nn.Module) -> Iterator[tuple[str, FcosFakeQuantize]]:
    for name, mod in gm.named_modules():
        if isinstance(mod, FcosFakeQuantize):
            yield name, mod


@contextmanager
def float_view(gm: nn.Module) -> Iterator[None]:
    """Every fake-quant and observer of ``gm`` off for the duration (the graph computes the
    float model, BN folded, and records nothing); each flag is restored afterwards."""
    saved = [
        (fq, fq.fake_quant_enabled.clone(), fq.observer_enabled.clone())
        for _, fq in fake_quants(gm)
    ]
    try:
        for fq, _, _ in saved:
            fq.enable_fake_quant(False)
            fq.enable_observer(False)
        yield
    finally:
        for fq, fake_quant, observer in saved:
            fq.fake_quant_enabled.copy_(fake_quant)
            fq.observer_enabled.copy_(observer)


def refresh_weight_ranges(gm: nn.Module) -> None:
    """Observe every weight as it is now (before convert: the final weights)."""
    if isinstance(gm, PreparedBody):
        gm = gm.graph_module
    with torch.no_grad():
        for _, fq in fake_quants(gm):
            if getattr(fq, "is_weight", False):
                fq.activation_post_process(gm.get_parameter(fq.weight_target))
                fq.sync_qparams()


def set_mode(gm: nn.Module, mode: str, freeze_activation_scales: bool = False) -> None:
    """Switch observers/fake-quants for ``mode`` in ``calibration | qat | frozen``."""
    if mode not in ("calibration", "qat", "frozen"):
        raise ValueError(f"mode: {mode!r}; use calibration, qat or frozen")
    for _, fq in fake_quants(gm):
        weight = getattr(fq, "is_weight", False)
        if mode == "frozen" or (mode == "qat" and freeze_activation_scales and not weight):
            observe = False
        else:
            observe = True
        if not observe and fq._stale:
            fq.sync_qparams()
        fq.enable_observer(observe)
        fq.enable_fake_quant(mode != "calibration")
    requires_grad = mode == "qat"
    for p in gm.parameters():
        p.requires_grad_(requires_grad)
