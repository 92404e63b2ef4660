"""Plugin discovery, guarded loading, environment switches, duplicates and misspellings."""

from __future__ import annotations

import json
import types

import pytest
import toy_plugin

from fcos_core import hookimpl
from fcos_core.cli.main import main
from fcos_core.errors import PluginError, RegistryError
from fcos_core.plugins import load_host
from fcos_core.testing import FakeDistribution, FakeEntryPoint, make_host, registered


def _ep(name="toy", dist="fcos-plugin-toy", error=None):
    return FakeEntryPoint(name, "toy_plugin", FakeDistribution(dist, "1.2.3"), error)


def test_entry_point_plugin_registers_with_provenance():
    host = make_host(entry_points=[_ep()])
    entry = host.registries["backbones"].lookup("toynet")
    assert (entry.plugin, entry.distribution, entry.version) == ("toy", "fcos-plugin-toy", "1.2.3")
    assert host.plugins["toy"].components["backbones"] == ["toynet"]
    assert entry.doc == "A toy backbone."


def test_broken_plugin_is_reported_not_fatal(capsys):
    bad = FakeEntryPoint(
        "broken",
        "nowhere",
        FakeDistribution("fcos-plugin-broken", "0.1"),
        ImportError("No module named 'nowhere'"),
    )
    host = make_host(entry_points=[bad, _ep()])
    assert "toynet" in host.registries["backbones"]
    (line,) = host.failure_report()
    assert "fcos-plugin-broken" in line and "No module named" in line
    assert "FCOS_DISABLE_PLUGINS=fcos-plugin-broken" in line
    assert main(["plugins"], host=host) == 0
    out = capsys.readouterr().out
    assert "fcos-plugin-broken" in out and "[failed]" in out and "FCOS_DISABLE_PLUGINS" in out


def test_plugin_raising_any_exception_at_import_is_guarded():
    bad = FakeEntryPoint("boom", "x", FakeDistribution("fcos-plugin-boom"), RuntimeError("boom"))
    host = make_host(entry_points=[bad])
    assert host.plugins["boom"].status == "failed"
    assert "RuntimeError: boom" in host.plugins["boom"].error


@pytest.mark.parametrize(
    "env,loaded",
    [
        ({"FCOS_DISABLE_PLUGINS": "fcos-plugin-toy"}, False),
        ({"FCOS_DISABLE_PLUGINS": "fcos_plugin_toy"}, False),  # normalised like pip does
        ({"FCOS_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
        ({"FCOS_DISABLE_PLUGIN_AUTOLOAD": "1", "FCOS_LOAD_PLUGINS": "toy"}, True),
        ({"FCOS_LOAD_PLUGINS": ""}, False),
        ({"FCOS_LOAD_PLUGINS": "fcos-plugin-toy,other"}, True),
        ({"FCOS_LOAD_PLUGINS": "other"}, False),
    ],
)
def test_environment_switches(monkeypatch, env, loaded):
    for key in ("FCOS_DISABLE_PLUGINS", "FCOS_DISABLE_PLUGIN_AUTOLOAD", "FCOS_LOAD_PLUGINS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    host = make_host(entry_points=[_ep()])
    assert ("toynet" in host.registries["backbones"]) is loaded
    if not loaded:
        assert host.plugins["toy"].status == "disabled"
        assert host.failure_report() == []  # disabled on purpose is not a failure


def test_duplicate_name_names_both_providers():
    twin = types.ModuleType("twin")

    @hookimpl
    def register_backbones(register):
        register("toynet", factory="x.y:z")

    twin.register_backbones = register_backbones
    with pytest.raises(RegistryError) as info:
        make_host(entry_points=[_ep()], plugins=[("twin", twin)])
    msg = str(info.value)
    assert "toynet" in msg and "fcos-plugin-toy" in msg and "plugin twin" in msg


def test_misspelled_hook_is_caught_with_plugin_name(capsys):
    typo = types.ModuleType("typo")

    @hookimpl
    def register_backbone(register):  # missing 's'
        register("x", factory="a.b:c")

    typo.register_backbone = register_backbone
    host = make_host(plugins=[("typo", typo), ("toy", toy_plugin)])
    assert host.plugins["typo"].status == "failed"
    assert "register_backbone" in host.plugins["typo"].error
    assert "toynet" in host.registries["backbones"]  # the others still load


def test_loading_is_idempotent():
    host = load_host(entry_points=[_ep()], collect=False)
    host.load_entry_points([_ep()])
    host.load_builtins()
    host.collect()
    host.collect()
    assert host.registries["backbones"].names() == ["toynet"]


def test_plugin_that_fails_while_registering_names_its_distribution():
    bad = types.ModuleType("bad")

    @hookimpl
    def register_necks(register):
        raise KeyError("oops")

    bad.register_necks = register_necks
    host = load_host(entry_points=False, plugins=[("bad", bad)], collect=False)
    host.plugins["bad"].distribution = "fcos-plugin-bad"
    with pytest.raises(PluginError) as info:
        host.collect()
    assert "fcos-plugin-bad" in str(info.value) and "FCOS_DISABLE_PLUGINS" in str(info.value)


def test_registered_fixture_adds_and_removes():
    host = make_host()
    with registered(host, toy_plugin, "toy"):
        assert "toynet" in host.registries["backbones"]
    assert "toynet" not in host.registries["backbones"]
    assert "toy" not in host.plugins


def test_unknown_name_suggests_and_lists():
    host = make_host(plugins=[("toy", toy_plugin)])
    with pytest.raises(RegistryError) as info:
        host.registries["backbones"].lookup("toynett")
    assert "did you mean 'toynet'" in str(info.value)
    assert "available: toynet" in str(info.value)


def test_plugins_json(capsys):
    host = make_host(entry_points=[_ep()])
    assert main(["plugins", "--json"], host=host) == 0
    data = json.loads(capsys.readouterr().out)
    (toy,) = [p for p in data if p["name"] == "toy"]
    assert toy["distribution"] == "fcos-plugin-toy" and toy["version"] == "1.2.3"
    assert toy["components"]["backbones"] == ["toynet"]


def test_every_hookspec_is_documented_and_has_a_registry_kind():
    from fcos_core.hookspecs import hook_docs
    from fcos_core.registry import KINDS

    docs = hook_docs()
    assert set(docs) == set(KINDS.values())
    for name, doc in docs.items():
        assert len(doc) > 40, f"{name} has no real docstring"
