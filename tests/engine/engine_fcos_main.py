"""``python -m engine_fcos_main ARGS``: fcos's command line with the engine stand-ins loaded.

Subprocess tests (torchrun children, the kill-and-resume run) start this instead of ``fcos``,
because the stand-in components are not an installed plugin.
"""

from __future__ import annotations

import sys

import engine_standins

from fcos_core import plugins
from fcos_core.cli import main as cli

_load_host = plugins.load_host


def _load_host_with_standins(**kwargs):
    kwargs["entry_points"] = False
    kwargs["plugins"] = [*kwargs.get("plugins", ()), ("engine_standins", engine_standins)]
    return _load_host(**kwargs)


plugins.load_host = _load_host_with_standins

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
