"""fcos's pytest plugin (entry point ``pytest11: fcos``): fixtures for plugin tests.

Installed with fcos-core, so every project that has fcos-core installed gets them without a
conftest.py:

``fcos_host``
    A :class:`~fcos_core.testing.isolation.PluginHostFactory`: ``fcos_host(my_plugin)`` builds
    a host with fcos-core's built-ins and exactly the named plugins (plus, with
    ``distributions=[...]``, those installed distributions' entry points). Everything it
    registered is unregistered at teardown, so tests do not depend on what else is installed
    nor on each other.
``fcos_standins``
    The stand-in plugin object (:class:`~fcos_core.testing.standin_plugin.StandIns`:
    ``tiny_backbone``, ``tiny_neck``, ``tiny_head``), to pass to ``fcos_host``.
``fcos_tiny``
    The stand-in modules (:mod:`fcos_core.testing.standins`: ``TinyBackbone``, ``TinyNeck``,
    ``TinyHead``); imports torch when a test asks for it.
``fcos_torch_free``
    :func:`~fcos_core.testing.assert_torch_free`: import modules in a fresh interpreter and
    fail, naming the import chain, when torch (or another ``forbidden`` package) came too.
``fcos_schema_check``
    :func:`~fcos_core.testing.assert_schema_matches_factory`, on the ``host=`` given or the
    last host ``fcos_host`` built in the test.
``fcos_build``
    :func:`~fcos_core.testing.build_block`: ``fcos_build(host, "backbones", "type: x")``
    validates one YAML block against the host's schemas and builds it.

This module is imported in every pytest session of an environment with fcos-core: it imports
no torch and builds nothing until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from fcos_core.testing.isolation import PluginHostFactory


@pytest.fixture
def fcos_host() -> Iterator[PluginHostFactory]:
    """Builds isolated plugin hosts; tears them all down after the test."""
    factory = PluginHostFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def fcos_standins() -> Any:
    """A fresh stand-in plugin object (tiny_backbone / tiny_neck / tiny_head)."""
    from fcos_core.testing.standin_plugin import StandIns

    return StandIns()


@pytest.fixture
def fcos_tiny() -> ModuleType:
    """The stand-in modules (imports torch)."""
    from fcos_core.testing import standins

    return standins


@pytest.fixture
def fcos_torch_free() -> Callable[..., None]:
    """``fcos_torch_free("my_pkg.plugin", "my_pkg.schema")``: fail when importing them in a
    fresh interpreter imports torch."""
    from fcos_core.testing.torch_free import assert_torch_free

    return assert_torch_free


@pytest.fixture
def fcos_schema_check(fcos_host: PluginHostFactory) -> Callable[..., None]:
    """``fcos_schema_check(kind, name, host=...)``: fail when the component's schema does not
    match its factory's signature. Without ``host``, the last host ``fcos_host`` built."""
    from fcos_core.testing.schema_check import assert_schema_matches_factory

    def check(kind: str, name: str, *, host: Any = None, **kw: Any) -> None:
        if host is None:
            if not fcos_host.hosts:
                raise RuntimeError("build a host with fcos_host(...) first, or pass host=")
            host = fcos_host.hosts[-1]
        assert_schema_matches_factory(kind, name, host=host, **kw)

    return check


@pytest.fixture
def fcos_build() -> Callable[..., Any]:
    """``fcos_build(host, kind, yaml_text, **extra)``: validate and build one block."""
    from fcos_core.testing import build_block

    return build_block
