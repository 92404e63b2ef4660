"""``ModelConvertPipeline``: applies converters in order and keeps the quantization order.

Call convention: ``converter(model, ctx) -> model`` with a
:class:`~fcos_core.convert_context.ConvertContext` (a converter that takes only the model is
called as ``converter(model)``). Around each converter the pipeline:

* checks ``converter.fcos_requires_qstate`` (forms it accepts) against the model's form
  (:mod:`fcos_core.quantization_state`) -- ``QAT2Quantize`` on a float model fails here with a
  message naming the conversions applied so far and what to add;
* carries the form and the history over when the converter returns a new object, sets
  ``converter.fcos_produces_qstate`` when declared, and records the converter's name;
* remembers ``qat_mode`` on the model for the quantization converters.
"""

from __future__ import annotations

import inspect
from typing import Any

from fcos_core.convert_context import ConvertContext
from fcos_core.quantization_state import (
    conversions,
    get_qat_mode,
    get_qstate,
    require_qstate,
    set_qat_mode,
    set_qstate,
)


def converter_name(converter: Any) -> str:
    return getattr(converter, "fcos_name", None) or type(converter).__name__


def _takes_context(converter: Any) -> bool:
    try:
        sig = inspect.signature(converter)
    except (TypeError, ValueError):
        return True
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def apply_converter(converter: Any, model: Any, ctx: ConvertContext) -> Any:
    """Run one converter with the order checks and bookkeeping described above."""
    name = converter_name(converter)
    requires = getattr(converter, "fcos_requires_qstate", None)
    if requires:
        require_qstate(model, requires, name)
    state, history, qat_mode = get_qstate(model), conversions(model), get_qat_mode(model)
    new = converter(model, ctx) if _takes_context(converter) else converter(model)
    if new is None:
        raise TypeError(f"converter {name} returned None; a converter returns the model")
    if new is not model:
        if not hasattr(new, "_fcos_qstate"):
            set_qstate(new, state)
        set_qat_mode(new, qat_mode)
    produces = getattr(converter, "fcos_produces_qstate", None)
    if produces:
        set_qstate(new, produces)
    object.__setattr__(new, "_fcos_conversions", [*history, name])
    return new


class ModelConvertPipeline:
    """Applies ``converters`` in order (see the module docstring).

    Args:
        qat_mode: how QAT treats BatchNorm (e.g. ``fuse_bn``); read by the quantization
            converters through :func:`fcos_core.quantization_state.get_qat_mode`.
        converters: the converters, applied in order.
    """

    def __init__(self, qat_mode: str | None = None, converters: Any = ()) -> None:
        converters = list(converters or [])
        for i, c in enumerate(converters):
            if not callable(c):
                raise TypeError(f"converters[{i}] ({type(c).__name__}) is not callable")
        self.qat_mode = qat_mode
        self.converters = converters

    def __call__(self, model: Any, ctx: ConvertContext | None = None) -> Any:
        ctx = ctx if ctx is not None else ConvertContext()
        if self.qat_mode is not None:
            set_qat_mode(model, self.qat_mode)
        for converter in self.converters:
            model = apply_converter(converter, model, ctx)
        return model
