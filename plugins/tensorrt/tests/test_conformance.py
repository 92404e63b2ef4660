"""The TensorRT backend against fcos's compile-backend conformance suite
(fcos_core.testing.conformance). Compiling needs TensorRT on a GPU; without it the whole class
is skipped with the reason (the registration is tested in test_tensorrt_backend.py too)."""

from __future__ import annotations

import pytest

from fcos_core.testing.conformance import CompileBackendConformance
from fcos_plugin_tensorrt.runtime import tensorrt_missing

_WHY = tensorrt_missing()


@pytest.mark.skipif(_WHY is not None, reason=f"needs TensorRT on a GPU: {_WHY}")
class TestTensorRTBackend(CompileBackendConformance):
    backend_name = "tensorrt"
    distributions = ("fcos-plugin-tensorrt",)
    torch_free_modules = ("fcos_plugin_tensorrt.schema",)
    head_output = "int8"  # the engine is explicit int8 end to end
