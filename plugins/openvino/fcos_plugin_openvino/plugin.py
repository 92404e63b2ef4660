"""Registers the ``openvino`` compile backend.

Torch-free and OpenVINO-free: the backend is referenced by an import string, so ``fcos
plugins`` and ``fcos check`` do not load either.
"""

from __future__ import annotations

from fcos_core import hookimpl
from fcos_plugin_openvino.schema import OpenVinoCompileOptions


@hookimpl
def register_compile_backends(register):
    register(
        "openvino",
        factory="fcos_plugin_openvino.backend:OpenVinoBackend",
        schema=OpenVinoCompileOptions,
        aliases=["OpenVINO", "ov"],
    )
