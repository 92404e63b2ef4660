"""``fcos plugins --verbose``: each component's factory as ``module:attr`` next to its
plugin, read from the registry (nothing imported), in text and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from fcos_core.cli.main import main
from fcos_core.hooks import hookimpl


def _direct(x: int) -> int:
    return x


class Direct:
    """Registers a factory object directly (not as a lazy 'module:attr' string)."""

    @hookimpl
    def register_backbones(self, register):
        register("direct_net", factory=_direct)


def test_verbose_lists_each_factory_under_its_plugin(fcos_host, fcos_standins, capsys):
    host = fcos_host(("stand-ins", fcos_standins))
    assert main(["plugins", "--verbose"], host=host) == 0
    out = capsys.readouterr().out
    block = out[out.index("stand-ins") :]
    assert "    backbones:\n      tiny_backbone  fcos_core.testing.standins:TinyBackbone\n" in block
    assert "      tiny_head  fcos_core.testing.standins:TinyHead\n" in block
    assert main(["plugins", "--verbose", "--all"], host=host) == 0
    assert "FCOSHead  fcos_core.models.head:FCOSHead" in capsys.readouterr().out
    assert main(["plugins"], host=host) == 0  # without --verbose: names on one line
    assert "    necks: tiny_neck\n" in capsys.readouterr().out


def test_verbose_json_and_directly_registered_factories(fcos_host, capsys):
    host = fcos_host(("direct", Direct()))
    assert main(["plugins", "--json", "--verbose"], host=host) == 0
    (row,) = [p for p in json.loads(capsys.readouterr().out) if p["name"] == "direct"]
    assert row["factories"] == {"backbones": {"direct_net": f"{__name__}:_direct"}}
    assert main(["plugins", "--json"], host=host) == 0
    assert all("factories" not in p for p in json.loads(capsys.readouterr().out))


def test_verbose_imports_no_torch():
    code = (
        "import sys\nfrom fcos_core.cli.main import main\n"
        "rc = main(['plugins', '--verbose', '--all'])\n"
        "print('TORCH', rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "TORCH 0 False", out.stdout + out.stderr
    assert "FCOSHead  fcos_core.models.head:FCOSHead" in out.stdout
