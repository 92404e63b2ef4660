"""Fixtures of the engine tests: a plugin host with the stand-ins, a tiny config, logging."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the stand-in plugin module and the subprocess scripts
    sys.path.insert(0, str(HERE))

TINY_CONFIG = HERE / "tiny_pipeline.yaml"


@pytest.fixture(scope="session")
def host():
    import engine_standins

    from fcos_core.plugins import load_host

    return load_host(entry_points=False, plugins=[("engine_standins", engine_standins)])


@pytest.fixture(autouse=True)
def _quiet_logging(tmp_path):
    from fcos_core.logging_setup import close_logging, configure_logging

    configure_logging(None, level="warning")
    yield
    close_logging()


@pytest.fixture
def tiny_cfg(host, tmp_path):
    """Load the tiny pipeline config with checkpoints under tmp_path; extra overrides allowed."""
    from fcos_core.config import load_config

    def load(*overrides: str):
        return load_config(TINY_CONFIG, host, [f"ckpt_dir={tmp_path / 'ckpt'}", *overrides])

    return load
