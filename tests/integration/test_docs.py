"""Docs meta-tests: every hook and registered component is documented, and the checked-in
config reference matches the installed components' schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fcos_core.docs_gen.config_reference import render, undocumented

ROOT = Path(__file__).parents[2]

#: the first-party distributions (plugins/*/pyproject.toml): the references document fcos-core
#: and these, whatever else is installed
FIRST_PARTY = sorted(
    re.search(r'^name\s*=\s*"([^"]+)"', p.read_text(encoding="utf-8"), re.M).group(1)
    for p in ROOT.glob("plugins/*/pyproject.toml"))

#: the command that regenerates a reference from exactly these plugins
REGENERATE = f"FCOS_LOAD_PLUGINS={','.join(FIRST_PARTY)} fcos docs"


@pytest.fixture
def host(fcos_host):
    return fcos_host(distributions=FIRST_PARTY)


def test_everything_registered_is_documented(host):
    assert host.failure_report() == []
    assert undocumented(host) == []


def test_config_reference_is_current(host):
    expected = render(host)
    current = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert current == expected, f"docs/config-reference.md is stale: run `{REGENERATE} config`"


def test_cli_reference_is_current(host):
    from fcos_core.docs_gen.config_reference import render_cli

    expected = render_cli(host)
    current = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert current == expected, f"docs/cli-reference.md is stale: run `{REGENERATE} cli`"

