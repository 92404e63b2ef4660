"""The onnx backend against fcos's compile-backend conformance suite
(fcos_core.testing.conformance): registration, check, compile -> load -> run, a damaged file,
detect()."""

from __future__ import annotations

from fcos_core.testing.conformance import CompileBackendConformance


class TestOnnxBackend(CompileBackendConformance):
    backend_name = "onnx"
    distributions = ("fcos-plugin-onnx",)
    torch_free_modules = ("fcos_plugin_onnx.schema",)
