"""The plugin-testing kit (fcos_core.testing) and its pytest plugin: isolated hosts, the
stand-ins' documented shapes, assert_torch_free and the schema-vs-factory check."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import attrs
import pytest

from fcos_core.hooks import hookimpl
from fcos_core.schema import arg
from fcos_core.testing import (
    FakeDistribution,
    FakeEntryPoint,
    PluginHostFactory,
    assert_schema_matches_factory,
    assert_torch_free,
    installed_entry_points,
    schema_mismatches,
)


class Extra:
    """A plugin adding one backbone (a lazy factory: nothing is imported)."""

    @hookimpl
    def register_backbones(self, register):
        register("extra_net", factory="json:loads")


# --- isolated hosts ---------------------------------------------------------------------------


def test_host_factory_builds_isolated_hosts_and_tears_them_down():
    hosts = PluginHostFactory()
    with_extra = hosts(Extra())
    plain = hosts()
    assert "extra_net" in with_extra.registries["backbones"]
    assert "extra_net" not in plain.registries["backbones"]
    assert "FCOSHead" in plain.registries["heads"]  # the built-ins are there
    hosts.close()
    for h in (with_extra, plain):
        assert h.pm.get_plugins() == set() and h.plugins == {}
        assert list(h.registries.entries()) == []
    assert hosts.hosts == []


def test_host_without_builtins_has_only_the_named_plugins():
    hosts = PluginHostFactory()
    try:
        h = hosts(("extra", Extra()), builtins=False)
        assert [e.name for e in h.registries.entries()] == ["extra_net"]
        assert list(h.plugins) == ["extra"]
    finally:
        hosts.close()


def test_fixture_unregisters_what_a_test_registered(tmp_path):
    """Through the pytest11 entry point, in a project with no conftest.py: the second test
    sees the first test's host emptied and a fresh host without its plugin."""
    (tmp_path / "test_iso.py").write_text(
        textwrap.dedent("""
        from fcos_core.hooks import hookimpl

        HOSTS = []

        class Extra:
            @hookimpl
            def register_backbones(self, register):
                register("extra_net", factory="json:loads")

        def test_registers(fcos_host):
            host = fcos_host(Extra())
            assert "extra_net" in host.registries["backbones"]
            HOSTS.append(host)

        def test_it_is_gone(fcos_host):
            (old,) = HOSTS
            assert old.pm.get_plugins() == set()
            assert "extra_net" not in old.registries["backbones"]
            assert "extra_net" not in fcos_host().registries["backbones"]
    """)
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "test_iso.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout + out.stderr


def test_installed_entry_points_keeps_only_the_named_distributions(monkeypatch, tmp_path):
    (tmp_path / "kit_probe_plugin.py").write_text(
        textwrap.dedent("""
        from fcos_core.hooks import hookimpl

        @hookimpl
        def register_backbones(register):
            register("probe_net", factory="json:loads")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        FakeEntryPoint("probe", "kit_probe_plugin", FakeDistribution("fcos-plugin-probe")),
        FakeEntryPoint("other", "no_such_module", FakeDistribution("other-dist")),
    ]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    assert installed_entry_points(["fcos_plugin.probe"]) == eps[:1]  # names compare normalised
    with pytest.raises(LookupError, match="missing-dist"):
        installed_entry_points(["fcos-plugin-probe", "missing-dist"])
    hosts = PluginHostFactory()
    try:
        h = hosts(distributions=["fcos-plugin-probe"])
        assert h.registries["backbones"].lookup("probe_net").distribution == "fcos-plugin-probe"
        assert "other" not in h.plugins  # never loaded: its import would have failed
    finally:
        hosts.close()


# --- stand-ins ----------------------------------------------------------------------------------


def test_stand_ins_produce_their_documented_shapes(fcos_tiny):
    import torch

    x = torch.zeros(2, 3, 64, 48)
    bb = fcos_tiny.TinyBackbone((8, 16, 32), width=8)
    feats = bb(x)
    # channels after stage i: min(width * 2**max(i - 2, 0), 64); stage i ends at 2**(i+1)
    assert bb.out_channels == [8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(2, 8, 8, 6), (2, 16, 4, 3), (2, 32, 2, 2)]
    res = fcos_tiny.TinyBackbone((4, 8), channels=(8, 16, 16), residual_at=(4,))
    assert [tuple(f.shape) for f in res(x)] == [(2, 16, 16, 12), (2, 16, 8, 6)]
    assert any(isinstance(m, fcos_tiny.Residual) for m in res.modules())

    neck = fcos_tiny.TinyNeck((8, 16, 32), bb.out_channels, 24)
    outs = neck(feats)
    assert neck.out_strides == [8, 16, 32]
    assert [tuple(f.shape) for f in outs] == [(2, 24, 8, 6), (2, 24, 4, 3), (2, 24, 2, 2)]
    bifpn = fcos_tiny.TinyNeck((4, 8), (16, 16), 16, fusion="bifpn")
    assert [tuple(f.shape) for f in bifpn(res(x))] == [(2, 16, 16, 12), (2, 16, 8, 6)]

    head = fcos_tiny.TinyHead(num_classes=5, in_strides=(8, 16, 32), in_channels=24)
    out = head(outs)
    sizes = [(8, 6), (4, 3), (2, 2)]
    assert [tuple(t.shape) for t in out] == (
        [(2, 5, *s) for s in sizes] + [(2, 4, *s) for s in sizes] + [(2, 1, *s) for s in sizes]
    )
    assert all(bool((box >= 0).all()) for box in out[3:6])


def test_stand_ins_fit_fcos_and_reject_bad_arguments(fcos_tiny):
    from fcos_core.models.fcos import FCOS

    bb = fcos_tiny.TinyBackbone((8, 16))
    neck = fcos_tiny.TinyNeck((8, 16), bb.out_channels, 32)
    FCOS(bb, neck, fcos_tiny.TinyHead(3, (8, 16), 32))  # the constructor checks the contracts
    with pytest.raises(ValueError, match="powers of two"):
        fcos_tiny.TinyBackbone((6, 12))
    with pytest.raises(ValueError, match="one entry per stage"):
        fcos_tiny.TinyBackbone((8,), channels=(8, 16))
    with pytest.raises(ValueError, match="bifpn"):
        fcos_tiny.TinyNeck((8, 16), (16, 32), 16, fusion="bifpn")


def test_stand_in_plugin_builds_from_yaml(fcos_host, fcos_standins, fcos_build, fcos_schema_check):
    import torch

    host = fcos_host(fcos_standins)
    for kind, name in (
        ("backbones", "tiny_backbone"),
        ("necks", "tiny_neck"),
        ("heads", "tiny_head"),
    ):
        fcos_schema_check(kind, name)
        assert (
            host.registries[kind]
            .lookup(name)
            .factory_ref.startswith("fcos_core.testing.standins:Tiny")
        )
    bb = fcos_build(host, "backbones", "type: tiny_backbone\nout_strides: [4, 8]\nwidth: 4")
    assert [tuple(f.shape) for f in bb(torch.zeros(1, 3, 16, 16))] == [(1, 4, 4, 4), (1, 4, 2, 2)]


def test_the_kit_and_its_pytest_plugin_import_no_torch():
    assert_torch_free(
        "fcos_core.testing",
        "fcos_core.testing.pytest_plugin",
        "fcos_core.testing.standin_plugin",
        "fcos_core.testing.conformance",
    )


# --- assert_torch_free ------------------------------------------------------------------------


def test_assert_torch_free_names_the_module_and_the_import_chain(tmp_path, monkeypatch):
    (tmp_path / "kit_clean_mod.py").write_text("import csv\n")
    (tmp_path / "kit_heavy_mod.py").write_text("import os\nimport kit_heavy_dep\n")
    (tmp_path / "kit_heavy_dep.py").write_text("X = 1\nfrom torch import nn\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert_torch_free("kit_clean_mod")
    with pytest.raises(AssertionError) as err:
        assert_torch_free("kit_clean_mod", "kit_heavy_mod")
    msg = str(err.value)
    assert "importing kit_heavy_mod imported torch" in msg
    assert "kit_heavy_mod.py:2" in msg and "kit_heavy_dep.py:2" in msg
    with pytest.raises(AssertionError, match="importing kit_clean_mod imported csv"):
        assert_torch_free("kit_clean_mod", forbidden=("csv",))
    with pytest.raises(ValueError, match="cannot check"):
        assert_torch_free("kit_clean_mod", forbidden=("sys",))
    with pytest.raises(AssertionError, match="No module named 'kit_missing_mod'"):
        assert_torch_free("kit_missing_mod")


# --- schema vs factory --------------------------------------------------------------------------


def make_thing(size: int, depth: int = 2, tags: list[str] | None = None) -> dict:
    return {"size": size, "depth": depth, "tags": tags}


def make_loose(size: int, **rest: object) -> dict:
    return {"size": size, **rest}


def make_needs_model(model: object, lr: float = 0.1) -> dict:
    return {"model": model, "lr": lr}


@attrs.frozen(kw_only=True)
class ThingArgs:
    """A thing."""

    size: int = arg(help="size")
    depth: int = arg(2, help="depth")
    tags: list[str] = arg([], help="tags (the factory's None)")


@attrs.frozen(kw_only=True)
class WrongDefaultArgs:
    """Depth defaults differ."""

    size: int = arg(help="size")
    depth: int = arg(3, help="depth")


@attrs.frozen(kw_only=True)
class UnknownFieldArgs:
    """A field the factory does not take; ``size`` missing."""

    depth: int = arg(2, help="depth")
    colour: str = arg("red", help="not an argument")


@attrs.frozen(kw_only=True)
class LrArgs:
    """Learning rate only."""

    lr: float = arg(0.1, help="lr")


class Things:
    @hookimpl
    def register_backbones(self, register):
        register("ok", factory=make_thing, schema=ThingArgs)
        register("wrong_default", factory=make_thing, schema=WrongDefaultArgs)
        register("unknown_field", factory=make_thing, schema=UnknownFieldArgs)
        register("loose", factory=make_loose, schema=UnknownFieldArgs)
        register("needs_model", factory=make_needs_model, schema=LrArgs)

    @hookimpl
    def register_optimizers(self, register):
        register("needs_model", factory=make_needs_model, schema=LrArgs)


def test_schema_check_catches_each_kind_of_mismatch(fcos_host):
    host = fcos_host(Things(), builtins=False)

    def problems(name, kind="backbones", **kw):
        return schema_mismatches(host.registries[kind].lookup(name), **kw)

    assert problems("ok") == []
    (p,) = problems("wrong_default")
    assert "'depth' defaults to 3 in the schema but to 2 in the factory" in p
    assert problems("wrong_default", defaults=False) == []
    got = problems("unknown_field")
    assert len(got) == 2
    assert "schema field 'colour' is not an argument" in got[0]
    assert "requires 'size', which the schema UnknownFieldArgs does not have" in got[1]
    want = (
        "backbones 'loose' (plugin Things-0): the factory requires 'size', which the "
        "schema UnknownFieldArgs does not have"
    )
    assert problems("loose") == [want]
    assert "requires 'model'" in problems("needs_model")[0]
    assert problems("needs_model", extra=("model",)) == []
    assert problems("needs_model", kind="optimizers") == []  # the trainer passes model=
    with pytest.raises(AssertionError, match="colour"):
        assert_schema_matches_factory("backbones", "unknown_field", host=host)
    assert_schema_matches_factory("backbones", "ok", host=host)


# --- conformance suites catch broken implementations --------------------------------------------


class _ListDataset:
    """Items from a function of the index (and of a counter, to be non-deterministic)."""

    def __init__(self, make):
        self.make, self.calls = make, 0

    def __len__(self):
        return 3

    def __getitem__(self, i):
        if i >= 3:
            raise IndexError(i)
        self.calls += 1
        return self.make(i, self.calls)


def _item(i, calls, box_dtype="float32", noise=False):
    import numpy as np

    img = np.full((8, 8, 3), i + (calls if noise else 0), np.uint8)
    return {
        "img": img,
        "gt_bboxes": np.array([[1, 1, 4, 5]], box_dtype),
        "gt_classes": np.array([i % 2], np.int64),
    }


def test_dataset_suite_passes_a_good_dataset_and_fails_bad_ones():
    from fcos_core.testing.conformance import DatasetConformance

    suite = DatasetConformance()
    suite.num_classes = 2
    good = _ListDataset(_item)
    for test in (
        suite.test_len_is_a_positive_int,
        suite.test_sample_structure,
        suite.test_items_are_deterministic,
        suite.test_index_out_of_range_raises,
    ):
        test(good)
    with pytest.raises(AssertionError):
        suite.test_sample_structure(_ListDataset(lambda i, c: _item(i, c, "float64")))
    with pytest.raises(AssertionError):
        suite.test_items_are_deterministic(_ListDataset(lambda i, c: _item(i, c, noise=True)))
    suite.num_classes = 1  # label 1 is out of range now
    with pytest.raises(AssertionError):
        suite.test_sample_structure(good)


def test_backend_suite_fails_a_load_that_accepts_a_damaged_file(tmp_path):
    from fcos_core.compile.backend import CompileResult
    from fcos_core.testing.conformance import CompileBackendConformance

    class Lenient:
        def load(self, artifact):
            return artifact.read_bytes()

    art = tmp_path / "model.bin"
    art.write_bytes(b"\x00" * 100)
    compiled = {"result": CompileResult(artifact=art, report={})}
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        CompileBackendConformance().test_load_rejects_a_damaged_artifact(
            Lenient(), compiled, tmp_path
        )


def test_host_ignores_the_users_plugin_switches(monkeypatch, tmp_path):
    (tmp_path / "kit_switch_plugin.py").write_text(
        "from fcos_core.hooks import hookimpl\n\n@hookimpl\ndef register_necks(register):\n"
        "    register('switch_neck', factory='json:loads')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [FakeEntryPoint("sw", "kit_switch_plugin", FakeDistribution("fcos-plugin-sw"))]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    monkeypatch.setenv("FCOS_DISABLE_PLUGINS", "fcos-plugin-sw")
    monkeypatch.setenv("FCOS_DISABLE_PLUGIN_AUTOLOAD", "1")
    hosts = PluginHostFactory()
    try:
        assert "switch_neck" in hosts(distributions=["fcos-plugin-sw"]).registries["necks"]
    finally:
        hosts.close()
    assert os.environ["FCOS_DISABLE_PLUGINS"] == "fcos-plugin-sw"  # restored afterwards
