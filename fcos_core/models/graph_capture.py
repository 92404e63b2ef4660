"""Whether a forward is being captured into a graph (or autocast), where the eager-training fast
paths of :mod:`fcos_core.models.fast_conv` and :mod:`fcos_core.models.fast_batchnorm` must stand
aside so that every graph sees the plain modules."""

from __future__ import annotations

import torch


def capturing_or_autocast() -> bool:
    """True while ``torch.jit`` scripts or traces, ``torch.compile``/``torch.export`` capture a
    graph, or CPU autocast is on. Checked before any test on a tensor, so that a trace never
    evaluates (and warns about) one."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.is_autocast_enabled("cpu")
    )
