"""Transparent huge pages for torch's CPU tensors, for this process only (``fcos run --thp``).

torch's CPU allocator puts tensors of 2 MB and more on transparent huge pages when
``THP_MEM_ALLOC_ENABLE`` is set at its first allocation (it reads the variable once): a
training step's large activations then fault in 512x fewer pages (docs/benchmarks.md: the
default, on, was measured faster). :func:`setup` sets the variable, makes torch read it, and
removes it again, so processes started later (compilers, ``torchrun`` children, spawned
workers) do not inherit it unasked; forked DataLoader workers share the setting with the
trainer, deliberately, since it lives in torch's memory, not in the environment.

Which setting wins: ``--thp`` / ``--no-thp``, else ``FCOS_THP=1|0``, else a
``THP_MEM_ALLOC_ENABLE`` the user exported (left as it is, children included: the user asked
for it), else on. The decision is logged at the start of the run (``huge_pages``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fcos_core.errors import FcosUserError

ENV = "THP_MEM_ALLOC_ENABLE"
OVERRIDE_ENV = "FCOS_THP"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

#: what :func:`setup` decided (None before it ran): logged by the pipeline
state: dict[str, Any] | None = None


def resolve(flag: bool | None, environ: Any = None) -> tuple[bool, str]:
    """(on, source) for ``--thp``/``--no-thp`` (``flag``; None when not given)."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return bool(flag), "--thp" if flag else "--no-thp"
    value = environ.get(OVERRIDE_ENV, "").strip().lower()
    if value:
        if value not in _TRUE + _FALSE:
            raise FcosUserError(
                f"{OVERRIDE_ENV}={environ[OVERRIDE_ENV]!r} is not a switch",
                hint=f"set {OVERRIDE_ENV}=1 (huge pages, the default) or "
                f"{OVERRIDE_ENV}=0, or pass --thp / --no-thp",
            )
        return value in _TRUE, OVERRIDE_ENV
    user = environ.get(ENV, "").strip()
    if user:
        return user not in ("0",), ENV  # torch reads it as an integer: non-zero is on
    return True, "default"


def setup(flag: bool | None = None) -> dict[str, Any]:
    """Apply the setting to torch's allocator in this process (see the module docstring)."""
    global state
    on, source = resolve(flag)
    applied = "torch" not in sys.modules  # afterwards torch has read the variable already
    if source != ENV:  # our decision: only for torch's first read, never exported
        saved = os.environ.get(ENV)
        if on:
            os.environ[ENV] = "1"
        else:
            os.environ.pop(ENV, None)
        try:
            import torch

            torch.empty(1)  # the allocator reads the variable at its first allocation
        finally:
            if saved is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = saved
    state = {"thp": on, "source": source, "applied": applied}
    return state


def log_state(logger: Any) -> None:
    """One log line with the decision (nothing when :func:`setup` did not run); ``applied``
    is false when torch was imported earlier (its allocator keeps its first setting)."""
    if state is not None:
        logger.info(
            "huge_pages",
            thp="on" if state["thp"] else "off",
            source=state["source"],
            applied=state["applied"],
        )
