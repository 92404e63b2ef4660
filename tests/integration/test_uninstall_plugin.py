"""Issue acceptance: uninstalling a first-party plugin removes its components and nothing
else; `fcos check` then names the package to install; reinstalling restores it.

This really runs pip against the test environment, so it always reinstalls in `finally`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _fcos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fcos_core", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_uninstall_and_reinstall_bifpn():
    before = _fcos("check", "configs/fcos_b0.yaml")
    if before.returncode != 0:
        pytest.fail(f"the seed config must check before the experiment: {before.stderr}")
    _pip("uninstall", "-y", "fcos-plugin-bifpn")
    try:
        after = _fcos("check", "configs/fcos_b0.yaml")
        listed = _fcos("plugins")
    finally:
        _pip("install", "--no-deps", "--no-build-isolation", "-e", str(ROOT / "plugins" / "bifpn"))
    assert after.returncode == 2
    assert "pip install fcos-plugin-bifpn" in after.stderr
    assert "Traceback" not in after.stderr
    # only the neck went away: backbone, dataset and metric still resolve
    assert "efficientnet" not in after.stderr and "Coco" not in after.stderr
    assert "fcos-plugin-bifpn" not in listed.stdout and "fcos-plugin-efficientnet" in listed.stdout
    again = _fcos("check", "configs/fcos_b0.yaml")
    assert again.returncode == 0, again.stderr
