"""Isolated plugin hosts for tests: exactly the plugins a test names, torn down afterwards.

A host built here never sees what else is installed unless the test names that distribution,
so a test passes the same way on a developer's machine with extra plugins and in CI.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

from fcos_core.hooks import ENTRY_POINT_GROUP
from fcos_core.plugins import PluginHost, load_host
from fcos_core.registry import Registries

#: the environment switches of fcos_core.plugins, which a test host ignores
PLUGIN_SWITCHES = ("FCOS_LOAD_PLUGINS", "FCOS_DISABLE_PLUGINS", "FCOS_DISABLE_PLUGIN_AUTOLOAD")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_entry_points(distributions: Iterable[str]) -> list[Any]:
    """The installed ``fcos`` entry points of the named distributions (PEP 503 names compare
    normalised). A named distribution that is not installed, or announces no fcos plugin, is
    an error: the test would otherwise pass without the plugin it meant to test."""
    wanted = {_norm(d): d for d in distributions}
    found = [
        ep
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and _norm(ep.dist.name) in wanted
    ]
    missing = set(wanted) - {_norm(ep.dist.name) for ep in found if ep.dist is not None}
    if missing:
        raise LookupError(
            f"no installed fcos plugin from {sorted(wanted[m] for m in missing)}; "
            "pip install it (pip install -e plugins/<name> for first-party ones)"
        )
    return found


@contextlib.contextmanager
def _without_plugin_switches() -> Iterator[None]:
    """The user's FCOS_LOAD_PLUGINS / FCOS_DISABLE_PLUGINS / FCOS_DISABLE_PLUGIN_AUTOLOAD do not
    reach a test host: the test names its plugins itself."""
    saved = {k: os.environ.pop(k) for k in PLUGIN_SWITCHES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _as_pair(plugin: Any, index: int) -> tuple[str, Any]:
    """(name, object) from a pair, a module, a module name or a plugin object."""
    if isinstance(plugin, tuple):
        return plugin[0], plugin[1]
    if isinstance(plugin, str):
        return plugin, importlib.import_module(plugin)
    if isinstance(plugin, ModuleType):
        return plugin.__name__, plugin
    return f"{type(plugin).__name__}-{index}", plugin


class PluginHostFactory:
    """Builds isolated hosts and tears them all down in :meth:`close`.

    ``factory(*plugins, builtins=True, distributions=())`` returns a collected host with
    fcos-core's built-ins (unless ``builtins=False``), the installed entry points of the named
    ``distributions`` only, and ``plugins``: ``(name, object)`` pairs, modules, module names
    or plugin objects (named after their class). The user's plugin environment switches
    (:data:`PLUGIN_SWITCHES`) do not apply. :meth:`close` unregisters every plugin from
    every host it built and empties their registries, so nothing registered in a test
    survives it.
    """

    def __init__(self) -> None:
        self.hosts: list[PluginHost] = []

    def __call__(
        self, *plugins: Any, builtins: bool = True, distributions: Sequence[str] = ()
    ) -> PluginHost:
        eps = installed_entry_points(distributions) if distributions else False
        with _without_plugin_switches():
            host = load_host(
                builtins=builtins,
                entry_points=eps,
                plugins=[_as_pair(p, i) for i, p in enumerate(plugins)],
            )
        self.hosts.append(host)
        return host

    def track(self, host: PluginHost) -> PluginHost:
        """Tear down a host built elsewhere along with this factory's own."""
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            for _, plugin in list(host.pm.list_name_plugin()):
                if plugin is not None:  # None marks a blocked name
                    host.pm.unregister(plugin)
            host.plugins.clear()
            host.registries = Registries()
        self.hosts.clear()
