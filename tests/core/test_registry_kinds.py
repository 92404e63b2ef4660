"""The registry kinds come from the hookspecs; KNOWN_PROVIDERS matches the first-party plugins."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from fcos_core import hookspecs
from fcos_core.plugins import load_host
from fcos_core.registry import KINDS, KNOWN_PROVIDERS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored parser has the same API
    from pip._vendor import tomli as tomllib

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"


def _first_party_plugins() -> list[tuple[str, str, str, Path]]:
    """(distribution, entry-point name, module, plugin folder) of every plugin in plugins/*,
    read from its pyproject.toml (so a plugin that is not installed is still checked)."""
    out = []
    for pyproject in sorted(PLUGINS_DIR.glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for ep_name, module in project.get("entry-points", {}).get("fcos", {}).items():
            out.append((project["name"], ep_name, module, pyproject.parent))
    return out


def _registered_by_first_party(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], str]:
    """(kind, name or alias) -> distribution, for everything the first-party plugins register
    (each plugin loaded alone, without built-ins or other installed plugins)."""
    out: dict[tuple[str, str], str] = {}
    for dist, ep_name, module, folder in _first_party_plugins():
        monkeypatch.syspath_prepend(str(folder))
        plugin = importlib.import_module(module.partition(":")[0])
        host = load_host(builtins=False, entry_points=False, plugins=[(ep_name, plugin)])
        for kind in KINDS:
            registry = host.registries[kind]
            for name in [*registry.names(), *registry.aliases()]:
                assert (kind, name) not in out, f"{kind} {name!r}: {out[kind, name]} and {dist}"
                out[(kind, name)] = dist
    return out


def test_kinds_are_the_registration_hookspecs():
    specs = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(fn, "fcos_spec", None) is not None
    ]
    assert specs, "no hookspec found"
    assert all(re.fullmatch(r"register_[a-z_]+", name) for name in specs), specs
    assert sorted(KINDS.values()) == sorted(specs)
    assert all(hook == f"register_{kind}" for kind, hook in KINDS.items())
    # the order of fcos plugins and the config reference: the hookspecs' order in the module
    lines = {name: inspect.getsourcelines(getattr(hookspecs, name))[1] for name in specs}
    assert list(KINDS.values()) == sorted(specs, key=lines.__getitem__)


def test_every_kind_has_a_registry():
    host = load_host(builtins=False, entry_points=False)
    assert host.registries.kinds() == list(KINDS)
    assert all(hasattr(host.pm.hook, hook) for hook in KINDS.values())


def test_known_providers_match_the_first_party_plugins(monkeypatch):
    """Every component (and alias) a first-party plugin registers has its distribution in
    KNOWN_PROVIDERS, so a config that names it without the plugin says what to install; and
    KNOWN_PROVIDERS names nothing that no first-party plugin registers."""
    assert _first_party_plugins(), f"no plugin found under {PLUGINS_DIR}"
    registered = _registered_by_first_party(monkeypatch)
    missing = {key: dist for key, dist in registered.items() if KNOWN_PROVIDERS.get(key) != dist}
    assert not missing, f"add to fcos_core.registry.KNOWN_PROVIDERS: {missing}"
    stale = {key: dist for key, dist in KNOWN_PROVIDERS.items() if key not in registered}
    assert not stale, f"KNOWN_PROVIDERS names components no first-party plugin registers: {stale}"


def test_unknown_first_party_type_names_its_distribution():
    """What the table is for: the hint of a lookup without the plugin installed."""
    host = load_host(builtins=True, entry_points=False)
    kind, name = next(key for key in KNOWN_PROVIDERS if key[0] == "compile_backends")
    _msg, hint = host.registries[kind].unknown_message(name)
    assert f"pip install {KNOWN_PROVIDERS[kind, name]}" in hint
