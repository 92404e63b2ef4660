"""A plugin package written outside fcos (its own pyproject), pip-installed, adds a backbone
that a YAML block then uses, with no change to the core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parents[1] / "fixtures" / "thirdparty_plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Install the fixture distribution into its own folder (the venv stays untouched)."""
    work = tmp_path_factory.mktemp("thirdparty")
    src = work / "src"
    shutil.copytree(FIXTURE, src)
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_installed_plugin_is_listed(site):
    out = subprocess.run(
        [sys.executable, "-m", "fcos_core", "plugins", "--json"],
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (tiny,) = [p for p in json.loads(out.stdout) if p["distribution"] == "fcos-plugin-tinynet"]
    assert tiny["version"] == "0.3.0" and tiny["components"] == {"backbones": ["tinynet"]}


@pytest.mark.slow
def test_yaml_block_uses_the_new_backbone(site):
    code = (
        "import torch\n"
        "from fcos_core.plugins import load_host\n"
        "from fcos_core.testing import build_block\n"
        "net = build_block(load_host(), 'backbones', 'type: tinynet\\nwidth: 4')\n"
        "feats = net(torch.zeros(1, 3, 16, 16))\n"
        "print([tuple(f.shape) for f in feats])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[(1, 4, 8, 8), (1, 8, 4, 4)]"


def test_without_the_plugin_the_type_is_unknown(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task_name: t\nckpt_dir: d\nmodel: {type: FCOS, backbone: {type: tinynet}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "fcos_core", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "tinynet" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_plugins_own_tests_pass_with_only_the_pytest_plugins_fixtures(site, tmp_path):
    """The fixture project's tests/ (no conftest.py), run from its own copy (outside this
    repository, so none of fcos's pytest configuration applies) against the installed
    distribution: the fixtures come from fcos-core's ``pytest11`` entry point."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(site.parent / "src" / "tests"),
        ],
        cwd=tmp_path,
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout, out.stdout
