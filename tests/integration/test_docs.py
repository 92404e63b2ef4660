"""Docs meta-tests: every hook and registered component is documented, the checked-in
references match the components' schemas, and every schema matches its factory. The host is
fcos-core plus the first-party distributions, whatever else is installed."""

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
    for p in ROOT.glob("plugins/*/pyproject.toml")
)

#: the command that regenerates a reference from exactly these plugins (`make docs` runs it)
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
    assert current == expected, (
        f"docs/config-reference.md is stale: run `make docs` (`{REGENERATE} config`)"
    )


def test_cli_reference_is_current(host):
    from fcos_core.docs_gen.config_reference import render_cli

    expected = render_cli(host)
    current = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert current == expected, (
        f"docs/cli-reference.md is stale: run `make docs` (`{REGENERATE} cli`)"
    )


def test_every_schema_matches_its_factory(host):
    """What the reference documents is what the factories take (imports every factory)."""
    from fcos_core.testing import schema_mismatches

    problems = [p for e in host.registries.entries() for p in schema_mismatches(e)]
    assert problems == []
