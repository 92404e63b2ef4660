"""Docs meta-tests: every hook and registered component is documented, and the checked-in
config reference matches the installed components' schemas."""

from __future__ import annotations

from pathlib import Path

from fcos_core.docs_gen.config_reference import render, undocumented
from fcos_core.plugins import load_host

ROOT = Path(__file__).parents[2]


def test_everything_registered_is_documented():
    host = load_host()
    assert host.failure_report() == []
    assert undocumented(host) == []


def test_config_reference_is_current():
    expected = render(load_host())
    current = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert current == expected, "docs/config-reference.md is stale: run `fcos docs config`"


def test_cli_reference_is_current():
    from fcos_core.docs_gen.config_reference import render_cli

    expected = render_cli(load_host())
    current = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert current == expected, "docs/cli-reference.md is stale: run `fcos docs cli`"
