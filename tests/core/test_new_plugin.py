"""`fcos new-plugin` creates a distribution that installs with pip and passes its own tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fcos_core.cli.main import main
from fcos_core.testing import make_host


def test_generated_plugin_installs_and_passes_its_tests(tmp_path, capsys):
    assert main(["new-plugin", "myaug", "--out", str(tmp_path)], host=make_host()) == 0
    root = tmp_path / "fcos-plugin-myaug"
    assert (root / "pyproject.toml").exists() and (root / "README.md").exists()
    site = tmp_path / "site"
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
            str(site),
            str(root),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "fcos_core", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (mine,) = [p for p in json.loads(listed.stdout) if p["distribution"] == "fcos-plugin-myaug"]
    assert mine["components"] == {"transforms": ["MyaugTransform"]}


def test_bad_name_and_existing_folder(tmp_path, capsys):
    assert main(["new-plugin", "9lives", "--out", str(tmp_path)], host=make_host()) == 2
    assert "not usable" in capsys.readouterr().err
    (tmp_path / "fcos-plugin-x").mkdir()
    assert main(["new-plugin", "x", "--out", str(tmp_path)], host=make_host()) == 2
    assert "already exists" in capsys.readouterr().err
