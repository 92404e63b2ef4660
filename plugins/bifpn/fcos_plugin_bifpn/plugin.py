"""Registers the ``BiFPN`` neck. Torch-free: the model is referenced by string."""

from __future__ import annotations

from fcos_core import hookimpl
from fcos_plugin_bifpn.schema import BiFPNArgs


@hookimpl
def register_necks(register):
    register("BiFPN", factory="fcos_plugin_bifpn.model:BiFPN", schema=BiFPNArgs)
