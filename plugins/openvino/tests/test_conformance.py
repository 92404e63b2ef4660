"""The openvino backend against fcos's compile-backend conformance suite
(fcos_core.testing.conformance): registration, check, compile -> load -> run, a damaged file,
detect()."""

from __future__ import annotations

from fcos_core.testing.conformance import CompileBackendConformance


class TestOpenVINOBackend(CompileBackendConformance):
    backend_name = "openvino"
    distributions = ("fcos-plugin-openvino", "fcos-plugin-onnx")
    torch_free_modules = ("fcos_plugin_openvino.schema",)
