"""Registers the ``efficientnet`` backbone. Torch-free: the model is referenced by string."""

from __future__ import annotations

from fcos_core import hookimpl
from fcos_plugin_efficientnet.schema import EfficientNetArgs


@hookimpl
def register_backbones(register):
    register(
        "efficientnet",
        factory="fcos_plugin_efficientnet.model:build_efficientnet",
        schema=EfficientNetArgs,
    )
