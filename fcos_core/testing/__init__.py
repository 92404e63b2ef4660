"""A testing kit for fcos and its plugins (importable without torch).

* :func:`make_host` builds an isolated plugin host with exactly the plugins a test names.
* :func:`registered` is a context manager that adds a plugin object for the duration of a
  ``with`` block (the register-in-a-fixture, unregister-in-``finally`` pattern).
* :class:`FakeEntryPoint` / :class:`FakeDistribution` let discovery tests pretend a
  distribution is installed, including one whose import raises.
* :func:`validate_block` / :func:`build_block` check and build one component block from YAML.
* :func:`assert_torch_free` imports modules in a fresh interpreter and fails if torch came too.
* :func:`assert_schema_matches_factory` compares a component's schema with its factory.
* :class:`PluginHostFactory` builds isolated hosts and tears them down (the ``fcos_host``
  fixture of the pytest plugin :mod:`fcos_core.testing.pytest_plugin`, registered through the
  ``pytest11`` entry point, so plugin projects get the fixtures without a conftest.py).
* torch-importing parts, imported on demand: :mod:`fcos_core.testing.standins` (tiny
  backbone/neck/head), :mod:`fcos_core.testing.conformance` (suites for compile backends and
  datasets), :mod:`fcos_core.testing.detection_data`.

Plugins use it from their own tests, e.g.::

    from fcos_core.testing import make_host, build_block

    def test_my_backbone_builds():
        host = make_host(plugins=[("mine", my_pkg.plugin)])
        net = build_block(host, "backbones", "type: mynet\\ndepth: 2")
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from fcos_core.plugins import PluginHost, load_host
from fcos_core.testing.isolation import PluginHostFactory, installed_entry_points
from fcos_core.testing.schema_check import assert_schema_matches_factory, schema_mismatches
from fcos_core.testing.torch_free import assert_torch_free

__all__ = [
    "FakeDistribution",
    "FakeEntryPoint",
    "PluginHostFactory",
    "assert_schema_matches_factory",
    "assert_torch_free",
    "build_block",
    "installed_entry_points",
    "make_host",
    "registered",
    "schema_mismatches",
    "validate_block",
]


@attrs.frozen
class FakeDistribution:
    """Just enough of ``importlib.metadata.Distribution`` for plugin discovery."""

    name: str
    version: str = "0.0.1"


@attrs.frozen
class FakeEntryPoint:
    """An entry point whose ``load()`` imports ``value`` (``module`` or ``module:attr``), or
    raises ``error`` when given."""

    name: str
    value: str
    dist: FakeDistribution | None = None
    error: BaseException | None = None
    group: str = "fcos"

    def load(self) -> Any:
        if self.error is not None:
            raise self.error
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj


def make_host(
    plugins: Sequence[tuple[str, Any]] = (),
    *,
    builtins: bool = True,
    entry_points: bool | Sequence[Any] = False,
) -> PluginHost:
    """A fresh host: fcos-core's built-ins (unless ``builtins=False``), the given plugins and
    no installed entry points (unless asked), so results do not depend on what is installed."""
    return load_host(builtins=builtins, entry_points=entry_points, plugins=plugins)


@contextlib.contextmanager
def registered(host: PluginHost, plugin: Any, name: str) -> Iterator[PluginHost]:
    """Register ``plugin`` on ``host`` for the ``with`` block; unregister it afterwards.

    The host's registries are rebuilt on entry and on exit, so a test sees exactly what the
    plugin adds and leaves nothing behind.
    """
    host._collected = False
    host.add_plugin(plugin, name)
    _recollect(host)
    try:
        yield host
    finally:
        host.pm.unregister(name=name)
        host.plugins.pop(name, None)
        _recollect(host)


def _recollect(host: PluginHost) -> None:
    from fcos_core.registry import Registries

    host.registries = Registries()
    for info in host.plugins.values():
        info.components.clear()
    host._collected = False
    host.collect()


def validate_block(host: PluginHost, kind: str, yaml_text: str) -> Any:
    """Validate one component block given as YAML text; raises ConfigError on problems."""
    from fcos_core.config.loader import parse_yaml_text
    from fcos_core.config.validate import Validator
    from fcos_core.errors import ConfigError

    data, lines = parse_yaml_text(yaml_text, "<test>")
    v = Validator(host.registries, lines)
    node = v.check_component(kind, data, ())
    if v.problems:
        raise ConfigError(v.problems)
    return node


def build_block(host: PluginHost, kind: str, yaml_text: str, **extra: Any) -> Any:
    """Validate and build one component block given as YAML text."""
    from fcos_core.build import build

    return build(validate_block(host, kind, yaml_text), **extra)
