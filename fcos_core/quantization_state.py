"""Which quantization form a model is in, shared by the engine and the quantization converters.

A model moves through ``float -> calibration -> qat -> quantized`` (calibration may be skipped:
``float -> qat``). The form is kept as an attribute on the model object so that a converter
applied in an order that cannot work (``QAT2Quantize`` on a float model) fails with a message
that names the conversions applied so far, instead of an obscure error deep inside torch.

Converters take part in two ways:

* declaratively: a converter object with ``fcos_requires_qstate`` (a tuple of forms it accepts)
  and ``fcos_produces_qstate`` (the form it returns) is checked and recorded by
  ``ModelConvertPipeline`` before and after it runs;
* explicitly: a converter calls :func:`require_qstate` on entry and :func:`set_qstate` on the
  model it returns.

This module imports no torch: it only reads and writes plain attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fcos_core.errors import FcosUserError

#: the forms a model goes through, in order
QSTATES: tuple[str, ...] = ("float", "calibration", "qat", "quantized")

_STATE_ATTR = "_fcos_qstate"
_HISTORY_ATTR = "_fcos_conversions"
_QAT_MODE_ATTR = "_fcos_qat_mode"


def get_qstate(model: Any) -> str:
    """The model's form; a model no converter touched is ``"float"``."""
    return getattr(model, _STATE_ATTR, "float")


def set_qstate(model: Any, state: str) -> None:
    """Record that ``model`` is now in form ``state`` (one of :data:`QSTATES`)."""
    if state not in QSTATES:
        raise ValueError(f"unknown quantization state {state!r}; one of {', '.join(QSTATES)}")
    # object.__setattr__ so that nn.Module.__setattr__ does not treat it specially
    object.__setattr__(model, _STATE_ATTR, state)


def conversions(model: Any) -> list[str]:
    """Names of the conversions applied to ``model`` so far, in order."""
    return list(getattr(model, _HISTORY_ATTR, []))


def set_qat_mode(model: Any, mode: str | None) -> None:
    """Remember ``ModelConvertPipeline``'s ``qat_mode`` (e.g. ``fuse_bn``) for the converters."""
    object.__setattr__(model, _QAT_MODE_ATTR, mode)


def get_qat_mode(model: Any) -> str | None:
    """The ``qat_mode`` of the pipeline converting ``model`` (None when not given)."""
    return getattr(model, _QAT_MODE_ATTR, None)


def require_qstate(model: Any, allowed: Iterable[str], converter: str) -> None:
    """Raise a clear error unless the model is in one of the ``allowed`` forms."""
    allowed = tuple(allowed)
    state = get_qstate(model)
    if state in allowed:
        return
    history = conversions(model)
    done = ", ".join(history) if history else "none"
    want = " or ".join(allowed)
    hint = _order_hint(state, allowed)
    raise FcosUserError(
        f"{converter} needs a {want} model, but the model is {state} "
        f"(conversions applied so far: {done})",
        hint=hint,
    )


def _order_hint(state: str, allowed: tuple[str, ...]) -> str:
    """What to put before the converter, from the expected order of forms."""
    steps = {"calibration": "Float2Calibration", "qat": "Float2QAT", "quantized": "QAT2Quantize"}
    if state == "float" and "qat" in allowed:
        return "add Float2QAT before it in the converters list"
    if state == "float" and "calibration" in allowed:
        return "add Float2Calibration before it in the converters list"
    later = [s for s in QSTATES if QSTATES.index(s) > QSTATES.index(state)]
    if any(a in later for a in allowed):
        nxt = next(a for a in QSTATES if a in allowed)
        return f"convert to {nxt} first ({steps.get(nxt, nxt)})"
    return "remove the conversion that already turned the model into " + state
