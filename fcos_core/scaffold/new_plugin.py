"""``fcos new-plugin NAME``: write a plugin distribution that installs and passes its tests.

The generated plugin registers one transform (``<Name>Transform``, a random brightness change)
through the public ``register_transforms`` hook, with a torch-free registration module, an attrs
schema, the transform itself, a README and tests that use :mod:`fcos_core.testing`.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path

from fcos_core.errors import FcosUserError
from fcos_core.plugins import PluginHost

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        help="short plugin name, lower case (e.g. 'brightness'); the "
        "distribution is fcos-plugin-<name>",
    )
    p.add_argument("--out", default=".", help="folder to create the plugin folder in")


def _files(name: str) -> dict[str, str]:
    pkg = f"fcos_plugin_{name}"
    dist = f"fcos-plugin-{name.replace('_', '-')}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Transform"
    return {
        "pyproject.toml": f'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An fcos plugin: the {cls} transform"
requires-python = ">=3.10"
dependencies = ["fcos-core", "numpy"]

[project.optional-dependencies]
test = ["pytest"]

# fcos finds plugins through this entry-point group; the value is the registration module
[project.entry-points.fcos]
{name} = "{pkg}.plugin"

[tool.setuptools]
packages = ["{pkg}"]
''',
        "README.md": f"""# {dist}

An [fcos](https://example.invalid/fcos) plugin that adds the `{cls}` transform.

```bash
pip install -e .          # then `fcos plugins` lists {dist}
python -m pytest tests    # its tests
```

## Config reference

```yaml
transforms:
  - {{type: {cls}, delta: 20, p: 0.5}}
```

| argument | type | default | meaning |
|---|---|---|---|
| `delta` | int | `20` | largest brightness change, in grey levels |
| `p` | float | `0.5` | probability of applying the change |
""",
        f"{pkg}/__init__.py": f'"""{dist}: an fcos plugin."""\n',
        f"{pkg}/schema.py": f'''"""Arguments of the components this plugin registers (torch-free)."""

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class {cls}Args:
    """Randomly brighten or darken the image by up to ``delta`` grey levels."""

    delta: int = arg(20, help="largest brightness change, in grey levels")
    p: float = arg(0.5, help="probability of applying the change")
''',
        f"{pkg}/plugin.py": f'''"""Registration: fcos imports this module at start-up, so it must not import torch."""

from fcos_core import hookimpl

from {pkg}.schema import {cls}Args


@hookimpl
def register_transforms(register):
    register("{cls}", factory="{pkg}.transform:{cls}", schema={cls}Args)
''',
        f"{pkg}/transform.py": f'''"""The transform itself: works on numpy HxWx3 uint8 images, before ToTensor."""

import numpy as np


class {cls}:
    """Add a random offset in [-delta, delta] to every pixel with probability ``p``."""

    def __init__(self, delta: int = 20, p: float = 0.5) -> None:
        if not 0 <= delta <= 255:
            raise ValueError(f"delta must be in [0, 255], got {{delta}}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {{p}}")
        self.delta = delta
        self.p = p

    def __call__(self, sample: dict) -> dict:
        if self.delta == 0 or np.random.random() >= self.p:
            return sample
        offset = np.random.randint(-self.delta, self.delta + 1)
        img = sample["img"].astype(np.int16) + offset
        sample["img"] = np.clip(img, 0, 255).astype(np.uint8)
        return sample
''',
        "tests/test_plugin.py": f'''"""Tests written with fcos's testing kit: the fixtures (fcos_host, fcos_torch_free,
fcos_schema_check) come with fcos-core's pytest plugin, no conftest.py needed."""

import numpy as np
import pytest

from fcos_core.errors import ConfigError
from fcos_core.testing import build_block, validate_block

import {pkg}.plugin as plugin


@pytest.fixture
def host(fcos_host):
    """fcos's built-ins and this plugin only, whatever else is installed."""
    return fcos_host(("{name}", plugin))


def test_registered(host):
    entry = host.registries["transforms"].lookup("{cls}")
    assert entry.doc.startswith("Randomly brighten")


def test_registration_imports_no_torch(fcos_torch_free):
    fcos_torch_free("{pkg}.plugin", "{pkg}.schema")


def test_schema_matches_the_factory(host, fcos_schema_check):
    fcos_schema_check("transforms", "{cls}", host=host)


def test_builds_from_yaml_and_changes_brightness(host):
    transform = build_block(host, "transforms", "type: {cls}\\ndelta: 30\\np: 1.0")
    np.random.seed(0)
    img = np.full((4, 4, 3), 100, np.uint8)
    out = transform({{"img": img.copy()}})["img"]
    assert out.dtype == np.uint8 and out.shape == img.shape
    offset = int(out[0, 0, 0]) - 100
    assert -30 <= offset <= 30 and (out.astype(int) - 100 == offset).all()


def test_p_zero_keeps_the_image(host):
    transform = build_block(host, "transforms", "type: {cls}\\np: 0.0")
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert (transform({{"img": img.copy()}})["img"] == img).all()


def test_bad_arguments_are_config_errors(host):
    with pytest.raises(ConfigError, match="delta"):
        validate_block(host, "transforms", "type: {cls}\\ndelta: lots")
    with pytest.raises(ConfigError, match="delta must be"):
        build_block(host, "transforms", "type: {cls}\\ndelta: 999")
''',
    }


def new_plugin_command(args: argparse.Namespace, host: PluginHost) -> int:
    name = args.name.replace("-", "_")
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise FcosUserError(
            f"plugin name {args.name!r} is not usable",
            hint="use lower-case letters, digits and '_', starting with a letter",
        )
    root = Path(args.out) / f"fcos-plugin-{name.replace('_', '-')}"
    if root.exists():
        raise FcosUserError(f"{root} already exists", hint="choose another name or --out folder")
    for rel, text in _files(name).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"created {root}\n  next: pip install -e {root} && python -m pytest {root}/tests")
    return 0
