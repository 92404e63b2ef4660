"""Writing and reading checkpoint files safely.

* Writes are atomic: the file is written to a temporary name in the same folder, flushed and
  fsynced, then renamed over the target (and the folder fsynced), so a run killed at any moment
  leaves either the old or the new checkpoint, never half of one.
* Reads use ``torch.load(weights_only=True)``: a checkpoint holds only tensors, numbers,
  strings, None, lists and dicts (random-generator states are stored as tensors), so loading
  one cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcos_core.atomic_write import write_atomically
from fcos_core.errors import FcosUserError

#: version of the checkpoint layout written by the Checkpoint callback
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` through a temporary file, fsync and rename
    (:func:`fcos_core.atomic_write.write_atomically`)."""
    return write_atomically(path, lambda f: torch.save(obj, f))


def load_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` on CPU, with user-readable errors."""
    path = Path(path)
    if not path.is_file():
        raise FcosUserError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which and why
        raise FcosUserError(
            f"cannot read {what} {str(path)!r}: {type(exc).__name__}: {str(exc)[:300]}",
            hint="the file may be truncated or not a torch checkpoint; only tensors, numbers, "
            "strings, lists and dicts are accepted (weights_only loading)",
        ) from None


# --- random generator states, as tensors --------------------------------------------------


def capture_rng() -> tuple[Any, ...]:
    """The raw states of python's, numpy's, torch's (and CUDA's) global generators (cheap:
    taken every step so that an interrupt can save the state of the last finished step)."""
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return (random.getstate(), np.random.get_state(), torch.random.get_rng_state(), cuda)


def rng_state(raw: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """Generator states (``raw`` from :func:`capture_rng`, default: now) as checkpointable
    tensors and numbers."""
    py, npy, tch, cuda = raw if raw is not None else capture_rng()
    py_version, py_state, py_gauss = py
    _np_name, np_keys, np_pos, np_has_gauss, np_gauss = npy
    out: dict[str, Any] = {
        "python_version": int(py_version),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": tch.clone(),
    }
    if cuda is not None:
        out["cuda"] = [s.clone() for s in cuda]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(
        (
            state["python_version"],
            tuple(int(x) for x in state["python"].tolist()),
            state["python_gauss"],
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.random.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
