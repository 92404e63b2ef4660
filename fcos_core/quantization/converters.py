"""The quantization converters: ``Float2Calibration``, ``Float2QAT``, ``QAT2Quantize``.

Each is a callable ``converter(model, ctx) -> model``. When the model has a ``body`` submodule
(an FCOS detector) only the body is converted and replaced; otherwise the model itself is the
body and the converted module is returned. The model's form is checked and recorded with
:mod:`fcos_core.quantization_state`, so a wrong order is a clear error.

Float2Calibration and Float2QAT build the *same* prepared graph (same keys in the state dict):
a calibration checkpoint loads into a freshly Float2QAT-converted model and the QAT observers
start from the calibrated ranges; a QAT checkpoint loads into Float2QAT's output for
QAT2Quantize. See docs/quantization.md.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fcos_core.convert_context import ConvertContext
from fcos_core.errors import FcosUserError
from fcos_core.quantization.exact_float import require_exact_float32
from fcos_core.quantization.rules import QuantRules, rules_for
from fcos_core.quantization_state import get_qat_mode, require_qstate, set_qstate
from fcos_core.schema import LazyComponent

_INFO_ATTR = "_fcos_quant_info"
_REFERENCE_ATTR = "_fcos_reference"

#: an observer constructor: called per tensor with ``dtype`` (and the spec's ``quant_min``,
#: ``quant_max``, ``qscheme``, ``is_dynamic``); returns a SymmetricObserver
ObserverFactory = Callable[..., Any]


def observer_factory(observer: Any, default: ObserverFactory, what: str) -> ObserverFactory:
    """The activation observer constructor a converter installs.

    ``observer`` is a config's observer block (``{type: percentile, percentile: 99.9}``, built
    lazily: the converter adds the per-tensor ``dtype``), an observer class or a
    ``Class.with_args(...)`` constructor, or None for ``default``. One observer is built now,
    so a bad option is an error when the converter is constructed, not mid-calibration.
    """
    from fcos_core.quantization.observers import SymmetricObserver

    if observer is None:
        factory = default
    elif isinstance(observer, LazyComponent):
        factory = observer.build
    elif isinstance(observer, str):
        raise TypeError(
            f"{what}: {observer!r} is an observer name; names are resolved in a "
            f"config ({what}: {{type: {observer}}}); in Python pass the observer "
            f"class or Class.with_args(...)"
        )
    elif callable(observer):
        factory = observer
    else:
        raise TypeError(
            f"{what}: expected an observer block, class or constructor, got "
            f"{type(observer).__name__}"
        )
    probe = factory(dtype=torch.int8)
    if not isinstance(probe, SymmetricObserver):
        raise FcosUserError(
            f"{what}: the observer is a {type(probe).__name__}, not a SymmetricObserver",
            hint="derive observers from fcos_core.quantization.observers.SymmetricObserver "
            "(its min_val/max_val state is what calibration checkpoints hold)",
        )
    return factory


# -- locating the body and the head's output flags ------------------------------------------


def body_of(model: nn.Module) -> nn.Module:
    body = getattr(model, "body", None)
    return body if isinstance(body, nn.Module) else model


def _head_flags(model: nn.Module) -> dict[str, bool]:
    """``int8_output``/``int16_output``/``dequant_output`` from the head, where present."""
    candidates = []
    body = getattr(model, "body", None)
    for holder in (body, model):
        head = getattr(holder, "head", None) if holder is not None else None
        if head is not None:
            candidates.append(head)
    candidates += [c for c in (body, model) if c is not None]
    flags: dict[str, bool] = {}
    for obj in candidates:
        for key in ("int8_output", "int16_output", "dequant_output"):
            if key not in flags and isinstance(getattr(obj, key, None), bool):
                flags[key] = getattr(obj, key)
    return flags


def output_dtype_for(model: nn.Module, rules: QuantRules) -> str:
    """The rules' ``output_dtype``, else the head's choice: int16_output -> int16,
    int8_output -> int8, a head with neither -> int32 (the last convs' accumulators); a model
    without head flags -> the activation dtype."""
    if rules.output_dtype is not None:
        return rules.output_dtype
    flags = _head_flags(model)
    if flags.get("int16_output"):
        return "int16"
    if flags.get("int8_output"):
        return "int8"
    if "int16_output" in flags or "int8_output" in flags:
        return "int32"
    return rules.activation_dtype


def dequant_output_for(model: nn.Module) -> bool:
    return _head_flags(model).get("dequant_output", True)


def _ctx(ctx: ConvertContext | None) -> ConvertContext:
    return ctx if ctx is not None else ConvertContext()


def _input_shape(ctx: ConvertContext) -> tuple[int, ...]:
    shapes = ctx.example_inputs
    if not shapes:
        raise FcosUserError(
            "the quantization converters need an example input shape",
            hint="set deploy_inputs: {img: [1, 3, H, W]} in the config",
        )
    if "img" in shapes:
        return tuple(shapes["img"])
    return tuple(next(iter(shapes.values())))


def _log(ctx: ConvertContext, event: str, **kv: Any) -> None:
    if ctx.logger is not None:
        ctx.logger.info(event, **kv)


def _replace_body(model: nn.Module, new_body: nn.Module) -> nn.Module:
    if isinstance(getattr(model, "body", None), nn.Module) and model is not new_body:
        model.body = new_body
        return model
    return new_body


class _Float2Prepared(abc.ABC):
    """Shared part of Float2Calibration and Float2QAT."""

    produces = "calibration"
    mode = "calibration"
    name = "Float2Calibration"

    def __init__(
        self, qat_mode: str | None, integer_exact: str = "eval", layer_precision: Any = None
    ) -> None:
        from fcos_core.quantization.integer_exact import EXACT_MODES
        from fcos_core.quantization.precision import parse_layer_precision
        from fcos_core.quantization.prepare import QAT_MODES

        if qat_mode is not None and qat_mode not in QAT_MODES:
            raise ValueError(f"qat_mode: {qat_mode!r} is not supported; use one of {QAT_MODES}")
        if integer_exact not in EXACT_MODES:
            raise ValueError(
                f"integer_exact: {integer_exact!r}; use one of {', '.join(EXACT_MODES)}"
            )
        self.qat_mode = qat_mode
        self.integer_exact = integer_exact
        # mixed precision (fcos_core.quantization.precision); parsed now, resolved on the graph
        self.layer_precision = parse_layer_precision(layer_precision)
        self.fcos_requires_qstate = ("float",)
        self.fcos_produces_qstate = self.produces

    @abc.abstractmethod
    def _observer(self) -> Callable[..., Any]:
        """The activation observer class this conversion installs."""

    def _set_mode(self, gm: nn.Module) -> None:
        from fcos_core.quantization.prepare import set_mode

        set_mode(gm, self.mode)

    def __call__(self, model: nn.Module, ctx: ConvertContext | None = None) -> nn.Module:
        from fcos_core.quantization.prepare import PreparedBody, prepare_body

        ctx = _ctx(ctx)
        require_qstate(model, self.fcos_requires_qstate, self.name)
        require_exact_float32(self.name)  # fake quant is matched to the integer model
        rules = rules_for(ctx.backend)
        qat_mode = self.qat_mode or get_qat_mode(model) or "fuse_bn"
        body = body_of(model)
        out_dtype = output_dtype_for(model, rules)
        try:
            gm = prepare_body(
                body,
                _input_shape(ctx),
                rules,
                self._observer(),
                out_dtype,
                qat_mode,
                self.integer_exact,
                self.layer_precision,
            )
            _check_precision_on_target(ctx.backend, gm.meta.get("layer_dtypes", {}), self.name)
        except FcosUserError:
            raise
        except ValueError as exc:
            raise FcosUserError(
                f"{self.name}: the model cannot be quantized: {exc}",
                hint="see docs/quantization.md for the supported ops",
            ) from exc
        prepared = PreparedBody(
            gm,
            {
                "rules": rules,
                "output_dtype": out_dtype,
                "dequant_output": dequant_output_for(model),
                "qat_mode": qat_mode,
                "input_shape": _input_shape(ctx),
                "layer_dtypes": dict(gm.meta.get("layer_dtypes", {})),
                "layer_names": dict(gm.meta.get("layer_names", {})),
            },
        )
        self._set_mode(prepared)
        prepared.train(model.training if model is not body else False)
        out = _replace_body(model, prepared)
        set_qstate(out, self.produces)
        _log(
            ctx,
            f"{self.name.lower()}.done",
            output_dtype=out_dtype,
            qat_mode=qat_mode,
            fake_quants=sum(1 for _ in _fake_quants(prepared)),
        )
        return out


def _check_precision_on_target(backend: Any, layer_dtypes: dict[str, str], what: str) -> None:
    """The compile backend's verdict on the mixed-precision layers (its optional
    ``check_layer_precision({layer: dtype}) -> [CheckIssue]``), before any calibration."""
    check = getattr(backend, "check_layer_precision", None)
    if not layer_dtypes or check is None:
        return
    issues = list(check(dict(layer_dtypes)))
    if issues:
        raise FcosUserError(
            f"{what}: layer_precision: the target ({getattr(backend, 'name', backend)}) cannot "
            f"run {len(issues)} layer(s):\n  " + "\n  ".join(i.render() for i in issues),
            hint="change those rules (docs/quantization.md, 'Mixed precision') or the march",
        )


def _fake_quants(gm: nn.Module) -> Any:
    from fcos_core.quantization.prepare import fake_quants

    return fake_quants(gm)


class Float2Calibration(_Float2Prepared):
    """Prepare the body for calibration: observers on, fake-quant off (the float model is
    observed), no gradients. :func:`freeze_observers` ends calibration: ranges fixed,
    fake-quant on (the calibrated model as it will be quantized).

    Args:
        activation_observer: the activation observer: a config's ``observers`` block (e.g.
            ``{type: percentile, percentile: 99.99}``), an observer class or
            ``Class.with_args(...)``; None: ``MSEObserver`` with its defaults (as HAT).
        qat_mode: ``fuse_bn`` (BN folded into the conv before quantization); None takes the
            pipeline's ``qat_mode``.
        integer_exact: when the fake-quant graph computes conv/add/requantize outputs with the
            integer model's arithmetic: ``eval`` (validation and prediction measure exactly
            what will be deployed), ``always`` (training too) or ``off`` (plain fake-quant).
    """

    produces = "calibration"
    mode = "calibration"
    name = "Float2Calibration"

    def __init__(
        self,
        activation_observer: Any = None,
        qat_mode: str | None = None,
        integer_exact: str = "eval",
        layer_precision: Any = None,
    ) -> None:
        from fcos_core.quantization.histogram_observers import MSEObserver

        super().__init__(qat_mode, integer_exact, layer_precision)
        self.observer = observer_factory(activation_observer, MSEObserver, "activation_observer")

    def _observer(self) -> Callable[..., Any]:
        return self.observer


class Float2QAT(_Float2Prepared):
    """Prepare the body for quantization-aware training: fake-quant on, observers tracking.

    Args:
        qat_observer: activation observer during QAT, as ``activation_observer`` of
            Float2Calibration; None: ``MinMaxObserver(averaging_constant=0.01)``, a moving
            average of min/max starting from the calibrated range.
        freeze_activation_scales: keep the activation scales fixed (those of the loaded
            calibration checkpoint) instead of tracking them.
        qat_mode: ``fuse_bn``; None takes the pipeline's ``qat_mode``.
        integer_exact: ``eval`` | ``always`` | ``off``, as for Float2Calibration; ``always``
            trains on the integer values (straight-through gradient, one more conv per conv).
    """

    produces = "qat"
    mode = "qat"
    name = "Float2QAT"

    #: the moving-average weight of the default QAT observer
    DEFAULT_AVERAGING_CONSTANT = 0.01

    def __init__(
        self,
        qat_observer: Any = None,
        freeze_activation_scales: bool = False,
        qat_mode: str | None = None,
        integer_exact: str = "eval",
        layer_precision: Any = None,
    ) -> None:
        from fcos_core.quantization.observers import MinMaxObserver

        super().__init__(qat_mode, integer_exact, layer_precision)
        default = MinMaxObserver.with_args(averaging_constant=self.DEFAULT_AVERAGING_CONSTANT)
        self.observer = observer_factory(qat_observer, default, "qat_observer")
        self.freeze_activation_scales = freeze_activation_scales

    def _observer(self) -> Callable[..., Any]:
        return self.observer

    def _set_mode(self, gm: nn.Module) -> None:
        from fcos_core.quantization.prepare import set_mode

        set_mode(gm, "qat", freeze_activation_scales=self.freeze_activation_scales)


class QAT2Quantize:
    """Freeze the fake-quant graph, ``convert_pt2e`` it and lower it to an integer model.

    Args:
        dequant_output: None: the head's ``dequant_output`` (True when absent). True: float
            outputs. False: integer outputs, scales from ``model.body.output_scales()``.
        keep_reference: keep a copy of the frozen fake-quant graph on the integer model (for
            :func:`quant_report` at the int_infer stage).
    """

    name = "QAT2Quantize"

    def __init__(self, dequant_output: bool | None = None, keep_reference: bool = True) -> None:
        self.dequant_output = dequant_output
        self.keep_reference = keep_reference
        self.fcos_requires_qstate = ("qat", "calibration")
        self.fcos_produces_qstate = "quantized"

    def __call__(self, model: nn.Module, ctx: ConvertContext | None = None) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        from fcos_core.quantization.bias_quant import remove_bias_fake_quant
        from fcos_core.quantization.integer_exact import remove_integer_exact
        from fcos_core.quantization.lower import lower_to_integer
        from fcos_core.quantization.prepare import (
            PreparedBody,
            fake_quants,
            refresh_weight_ranges,
            set_mode,
            strip_observe_flags,
        )

        ctx = _ctx(ctx)
        require_qstate(model, self.fcos_requires_qstate, self.name)
        prepared = body_of(model)
        if not isinstance(prepared, PreparedBody):
            raise FcosUserError(
                f"{self.name}: the model body is not a prepared fake-quant graph",
                hint="apply Float2QAT (or Float2Calibration) first",
            )
        info = prepared.info
        gm = prepared.graph_module
        set_mode(gm, "frozen")
        refresh_weight_ranges(gm)  # the weights as loaded now, not as last observed
        uncalibrated = [
            n
            for n, fq in fake_quants(gm)
            if not getattr(fq, "is_weight", False) and not fq.has_data()
        ]
        if uncalibrated:
            _log(
                ctx,
                "qat2quantize.uncalibrated",
                count=len(uncalibrated),
                first=uncalibrated[:5],
                note="their scale is the minimum scale",
            )
        reference = copy.deepcopy(gm) if self.keep_reference else None
        work = copy.deepcopy(gm)
        remove_integer_exact(work)
        remove_bias_fake_quant(work)
        strip_observe_flags(work)
        converted = convert_pt2e(work)
        dequant = (
            self.dequant_output if self.dequant_output is not None else bool(info["dequant_output"])
        )
        try:
            int_model = lower_to_integer(converted, info["rules"], dequant_output=dequant)
        except ValueError as exc:
            raise FcosUserError(
                f"{self.name}: cannot lower to integer ops: {exc}",
                hint="see docs/quantization.md, 'Integer semantics'",
            ) from exc
        object.__setattr__(int_model, _INFO_ATTR, dict(info, dequant_output=dequant))
        object.__setattr__(int_model, _REFERENCE_ATTR, reference)
        int_model.eval()
        require_exact_float32(self.name)  # the integer ops' accumulators are float convs
        out = _replace_body(model, int_model)
        set_qstate(out, "quantized")
        if int_model.warnings:
            _log(
                ctx,
                "qat2quantize.accumulator_overflow_risk",
                convs=int_model.warnings[:5],
                count=len(int_model.warnings),
            )
        _log(
            ctx,
            "qat2quantize.done",
            ops=len(int_model.program),
            dequant_output=dequant,
            output_dtypes=list(int_model.output_dtypes()),
        )
        return out


def float_reference(model: nn.Module) -> nn.Module | None:
    """The frozen fake-quant graph QAT2Quantize kept on the integer model (None when not kept);
    with its fake-quants off it is the float reference of the report."""
    return getattr(body_of(model), _REFERENCE_ATTR, None)


def quant_info(model: nn.Module) -> dict[str, Any] | None:
    body = body_of(model)
    info = getattr(body, "info", None)
    return info if isinstance(info, dict) else getattr(body, _INFO_ATTR, None)


def freeze_observers(model: nn.Module) -> None:
    """Stop every observer of a calibration/QAT model and switch every fake-quant on.

    The calibrator calls this after its last step: validation then measures the quantized
    model and never moves the calibrated ranges (observers keep updating in eval mode
    otherwise). Weight ranges are refreshed from the current weights first.
    """
    from fcos_core.quantization.prepare import fake_quants, refresh_weight_ranges

    body = body_of(model)
    refresh_weight_ranges(body)  # weight scales follow the weights as they are now
    for _, fq in fake_quants(body):
        if fq._stale:
            fq.sync_qparams()
        fq.enable_observer(False)
        fq.enable_fake_quant(True)


__all__ = [
    "Float2Calibration",
    "Float2QAT",
    "QAT2Quantize",
    "float_reference",
    "freeze_observers",
    "observer_factory",
]
