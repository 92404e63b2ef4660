"""The integer model inside a quantized deploy model, for compile backends and exporters.

A deploy model after ``QAT2Quantize`` is either an :class:`IntegerModel` itself or a detector
whose ``body`` is one (with a ``post_process`` that a backend compiles when it is marked
``for_compile``). Two names, one rule: :func:`find_integer_model` answers "is this quantized?"
(None when not), :func:`require_integer_model` is the compile's precondition (a float model is
a user error that names the stage that quantizes it).
"""

from __future__ import annotations

from typing import Any

from fcos_core.errors import FcosUserError


def find_integer_model(model: Any) -> tuple[Any, Any] | None:
    """``(integer_model, compile_post_process_or_None)`` of a quantized deploy model; None
    for a model that is not quantized."""
    from fcos_core.quantization.integer_model import IntegerModel

    if isinstance(model, IntegerModel):
        return model, None
    body = getattr(model, "body", None)
    if isinstance(body, IntegerModel):
        post = getattr(model, "post_process", None)
        return body, post if getattr(post, "for_compile", False) else None
    return None


def require_integer_model(model: Any) -> tuple[Any, Any]:
    """:func:`find_integer_model` for a compile: a model that is not quantized raises
    :class:`FcosUserError` saying which stage makes one."""
    found = find_integer_model(model)
    if found is None:
        raise FcosUserError(
            f"the model to compile ({type(model).__name__}) is not a quantized deploy "
            "model: expected an IntegerModel or a detector whose body is one",
            hint="run the int_infer stage (QAT2Quantize) first; `fcos check` checks float models",
        )
    return found
