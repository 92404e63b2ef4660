"""``assert_torch_free``: importing a module must not import torch (registration, schemas and
CLI start-up stay cheap). The import runs in a fresh interpreter, since the test process has
long imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from types import ModuleType

# Runs in the child: a meta-path finder notes the import chain (the non-importlib frames of
# the stack) the first time a forbidden top-level package is imported, then imports the
# modules one by one and prints what it saw as JSON.
_PROBE = r"""
import importlib, json, sys, traceback

modules, forbidden = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
seen = {}

class _Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in forbidden and top not in seen:
            frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                      if not f.filename.startswith("<frozen")]
            seen[top] = {"by": current[0], "chain": frames[-8:]}
        return None

current = [None]
preloaded = sorted(f for f in forbidden if f in sys.modules)
sys.meta_path.insert(0, _Watch())
for m in modules:
    current[0] = m
    importlib.import_module(m)
print("FCOS-TORCH-FREE " + json.dumps(
    {"seen": {k: v for k, v in seen.items() if k in sys.modules}, "preloaded": preloaded}))
"""


def assert_torch_free(
    *modules: str | ModuleType, forbidden: Sequence[str] = ("torch",), timeout: float = 120.0
) -> None:
    """Import ``modules`` (names or module objects) in a fresh interpreter and fail when that
    imported any of ``forbidden`` (top-level package names, ``torch`` by default).

    The failure names the module whose import pulled the package in and the import chain
    (``file:line`` frames), so the offending top-level import is easy to find. A module that
    cannot be imported at all fails with the child's traceback.
    """
    names = [m.__name__ if isinstance(m, ModuleType) else str(m) for m in modules]
    if not names:
        raise ValueError("assert_torch_free needs at least one module")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names), json.dumps(list(forbidden))],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    marker = [ln for ln in out.stdout.splitlines() if ln.startswith("FCOS-TORCH-FREE ")]
    if out.returncode != 0 or not marker:
        raise AssertionError(
            f"importing {', '.join(names)} failed (exit {out.returncode}):\n{out.stderr.strip()}"
        )
    report = json.loads(marker[-1].split(" ", 1)[1])
    if report["preloaded"]:
        raise ValueError(
            f"cannot check {report['preloaded']}: a fresh interpreter has imported "
            "them before any module under test"
        )
    seen = report["seen"]
    if seen:
        lines = [
            f"importing {info['by']} imported {pkg}, via:\n    " + "\n    ".join(info["chain"])
            for pkg, info in sorted(seen.items())
        ]
        raise AssertionError("\n".join(lines) + "\nimport it inside the function that needs it")
