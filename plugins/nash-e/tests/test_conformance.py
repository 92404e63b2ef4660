"""The NASH-E backend against fcos's compile-backend conformance suite
(fcos_core.testing.conformance): registration, check, compile -> load -> run, a damaged file,
detect()."""

from __future__ import annotations

from fcos_core.testing.conformance import CompileBackendConformance


class TestNashEBackend(CompileBackendConformance):
    backend_name = "nash_e"
    distributions = ("fcos-plugin-nash-e",)
    torch_free_modules = ("fcos_plugin_nash_e.schema", "fcos_plugin_nash_e.runtime")
