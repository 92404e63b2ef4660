"""Registers the ``tensorrt`` compile backend.

Torch-free and TensorRT-free: the backend is referenced by an import string, so ``fcos plugins``
and ``fcos check`` work on machines without a GPU or the ``tensorrt`` package.
"""

from __future__ import annotations

from fcos_core import hookimpl
from fcos_plugin_tensorrt.schema import TensorRTCompileOptions


@hookimpl
def register_compile_backends(register):
    register(
        "tensorrt",
        factory="fcos_plugin_tensorrt.backend:TensorRTBackend",
        schema=TensorRTCompileOptions,
        aliases=["TensorRT", "trt"],
    )
