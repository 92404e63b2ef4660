"""Start-up commands must not import torch (torch alone takes ~1.6 s; the budget is 2 s).

The wall-clock figures are measured by benchmarks/bench_startup.py; this test checks the
cause (what gets imported), which is deterministic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

COMMANDS = [
    ["--help"],
    ["plugins"],
    ["plugins", "--json"],
    ["check", str(ROOT / "configs" / "fcos_b0.yaml")],
    ["check", str(ROOT / "configs" / "fcos_b0_demo.yaml")],
    ["run", "--help"],
]

PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['fcos'] + sys.argv[1:]\n"
    "from fcos_core.cli.main import main\n"
    "try:\n"
    "    code = main()\n"
    "except SystemExit as exc:  # --help exits through argparse\n"
    "    code = exc.code or 0\n"
    "heavy = sorted(m for m in ('torch', 'torchvision', 'torchao', 'numpy', 'matplotlib')\n"
    "               if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:1] + c[2:]) or c[0] for c in COMMANDS])
def test_command_imports_no_torch(argv):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "FCOS_DEBUG": "1"},
    )
    assert out.returncode == 0, out.stderr
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], out.stderr
