"""The plugin host: loads built-in and installed plugins, then fills the registries.

Loading is explicit (:func:`load_host`) and each host is independent, so tests can build one
with exactly the plugins they want. Installed plugins are found through the ``fcos``
entry-point group; each load is guarded, so one broken plugin is reported (with its
distribution name and how to skip it) instead of taking the whole tool down.

Environment variables:

``FCOS_LOAD_PLUGINS``
    Comma-separated allow-list of plugin or distribution names to load from entry points.
    Set but empty: load none.
``FCOS_DISABLE_PLUGIN_AUTOLOAD``
    ``1``: load no entry-point plugin except those named in ``FCOS_LOAD_PLUGINS``.
``FCOS_DISABLE_PLUGINS``
    Comma-separated plugin or distribution names never to load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import attrs
import pluggy

from fcos_core import hookspecs
from fcos_core.errors import FcosUserError, PluginError
from fcos_core.hooks import ENTRY_POINT_GROUP, PROJECT_NAME
from fcos_core.registry import KINDS, Registries

#: modules of fcos-core that register its own components through the same hooks
BUILTIN_PLUGINS: tuple[str, ...] = (
    "fcos_core.builtin.model",
    "fcos_core.builtin.data",
    "fcos_core.builtin.engine",
    "fcos_core.builtin.quantization",
    "fcos_core.builtin.commands",
)


def _norm(name: str) -> str:
    """Distribution names compare as PEP 503 normalises them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [_norm(x) for x in raw.split(",") if x.strip()]


@attrs.define
class PluginInfo:
    """One plugin as ``fcos plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    components: dict[str, list[str]] = attrs.field(factory=dict)


class PluginHost:
    """A pluggy manager plus the registries its plugins filled."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registries = Registries()
        self.plugins: dict[str, PluginInfo] = {}
        self._collected = False

    # -- loading ----------------------------------------------------------------------------

    def add_plugin(
        self,
        plugin: ModuleType | object,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> None:
        """Register one plugin object (module or instance). Idempotent per name."""
        if name in self.plugins and self.plugins[name].status == "loaded":
            return
        if self._collected:
            raise PluginError(
                f"plugin {name} added after the registries were filled",
                hint="add every plugin before calling collect()",
            )
        self.pm.register(plugin, name=name)
        self.plugins[name] = PluginInfo(name, distribution, version, builtin)

    def add_failure(
        self,
        name: str,
        distribution: str | None,
        version: str | None,
        error: str,
        status: str = "failed",
    ) -> None:
        self.plugins[name] = PluginInfo(name, distribution, version, False, status, error)

    def load_entry_points(self, entry_points: Iterable[Any] | None = None) -> None:
        """Load every plugin announced in the ``fcos`` entry-point group, each guarded."""
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        allow = _env_list("FCOS_LOAD_PLUGINS")
        deny = _env_list("FCOS_DISABLE_PLUGINS") or []
        no_autoload = os.environ.get("FCOS_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else None
            version = dist.version if dist is not None else None
            keys = {_norm(ep.name)} | ({_norm(dist_name)} if dist_name else set())
            if keys & set(deny):
                self.add_failure(
                    ep.name,
                    dist_name,
                    version,
                    "disabled by FCOS_DISABLE_PLUGINS",
                    status="disabled",
                )
                continue
            if (allow is not None or no_autoload) and not keys & set(allow or []):
                why = (
                    "not in FCOS_LOAD_PLUGINS"
                    if allow is not None
                    else "FCOS_DISABLE_PLUGIN_AUTOLOAD is set"
                )
                self.add_failure(ep.name, dist_name, version, why, status="disabled")
                continue
            if ep.name in self.plugins and self.plugins[ep.name].status == "loaded":
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a plugin's import error must not stop fcos
                self.add_failure(
                    ep.name, dist_name, version, f"import failed: {type(exc).__name__}: {exc}"
                )
                continue
            self.add_plugin(plugin, ep.name, dist_name, version)

    def load_builtins(self, modules: Sequence[str] = BUILTIN_PLUGINS) -> None:
        import fcos_core

        for mod in modules:
            self.add_plugin(
                importlib.import_module(mod), mod, "fcos-core", fcos_core.__version__, builtin=True
            )

    def _check_pending(self) -> None:
        """Unregister plugins whose hook implementations match no hookspec (misspellings)."""
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or str(exc.plugin)
                self.pm.unregister(exc.plugin)
                info = self.plugins.get(name)
                if info is not None:
                    info.status = "failed"
                    info.error = f"invalid hook implementation: {exc}"
                    if info.builtin:
                        raise PluginError(f"built-in plugin {name} is invalid: {exc}") from exc

    def collect(self) -> None:
        """Call every registration hook once and fill the registries."""
        if self._collected:
            return
        self._check_pending()
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.status != "loaded":
                    continue
                register = self.registries.make_register(
                    kind, impl.plugin_name, info.distribution, info.version
                )
                before = set(self.registries[kind].names())
                try:
                    impl.function(**dict.fromkeys(impl.argnames, register))
                except FcosUserError:  # duplicates and bad registrations already say who
                    raise
                except Exception as exc:
                    if info.builtin:
                        raise
                    raise PluginError(
                        f"plugin {impl.plugin_name} ({info.distribution}) failed in {hook_name}: "
                        f"{type(exc).__name__}: {exc}",
                        hint=f"set FCOS_DISABLE_PLUGINS={info.distribution or impl.plugin_name} "
                        "to skip it",
                    ) from exc
                added = sorted(set(self.registries[kind].names()) - before)
                if added:
                    info.components.setdefault(kind, []).extend(added)
        self._collected = True

    # -- queries ----------------------------------------------------------------------------

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "failed"]

    def failure_report(self) -> list[str]:
        """One line per broken plugin, with how to skip it."""
        lines = []
        for p in self.failed():
            skip = p.distribution or p.name
            lines.append(
                f"plugin {p.name} from {p.distribution or 'unknown distribution'} "
                f"{p.version or ''} could not be loaded: {p.error} "
                f"(skip it with FCOS_DISABLE_PLUGINS={skip})"
            )
        return lines


def load_host(
    *,
    builtins: bool = True,
    entry_points: bool | Iterable[Any] = True,
    plugins: Sequence[tuple[str, Any]] = (),
    collect: bool = True,
) -> PluginHost:
    """Build a plugin host.

    ``entry_points`` may be False (none), True (the installed ones) or an iterable of
    entry-point-like objects (tests use fakes). ``plugins`` adds (name, object) pairs directly.
    """
    host = PluginHost()
    if builtins:
        host.load_builtins()
    if entry_points is True:
        host.load_entry_points()
    elif entry_points:
        host.load_entry_points(entry_points)
    for name, obj in plugins:
        host.add_plugin(obj, name)
    if collect:
        host.collect()
    return host
