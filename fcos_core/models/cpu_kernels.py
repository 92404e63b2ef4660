"""Build and load fcos's C++ kernels for eager CPU training (``torch.ops.fcos_kernels``).

The kernels (``csrc/``) speed up what ATen does slowly on CPU for this network:

* ``batch_norm_act_forward`` / ``batch_norm_act_backward``: training-mode BatchNorm2d with the
  ReLU fused in, on channels-last tensors (:mod:`fcos_core.models.fast_batchnorm`);
* ``depthwise_weight_grad``: the weight gradient of a depthwise conv on channels-last tensors
  (:mod:`fcos_core.models.fast_conv`).

They are compiled on first use with ``torch.utils.cpp_extension`` (about 15 s with two cores;
cached in torch's extension folder, ``TORCH_EXTENSIONS_DIR``, and reused by later runs and by
every DDP rank). ``python -m fcos_core.models.cpu_kernels`` builds them ahead of time. The build
uses ``-march=native``, so the extension's name carries a hash of this CPU's instruction sets
and of torch's version: a shared home folder never hands one machine's build to another.

Where they cannot be built (no C++ compiler, say) a warning names the cause once and training
uses the stock modules: slower, never different. ``FCOS_CPU_KERNELS=0`` switches them off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

SOURCES = tuple(Path(__file__).with_name("csrc") / name
                for name in ("batch_norm_act.cpp", "depthwise_weight_grad.cpp"))
#: ops the extension must register (a stale or partial build is treated as unavailable)
OPS = ("batch_norm_act_forward", "batch_norm_act_backward", "depthwise_weight_grad")

#: a kernel splits its rows over threads only in chunks of at least this many elements: below
#: it, waking a sleeping OpenMP thread (~0.2 ms under OMP_WAIT_POLICY=PASSIVE) costs more than
#: the second thread saves (tuned on the seed's backbone + neck, docs/benchmarks.md)
MIN_ELEMENTS_PER_THREAD = 1 << 16

_lock = threading.Lock()
_state: dict[str, Any] = {"available": None, "error": None}


def enabled_by_environment() -> bool:
    """False when ``FCOS_CPU_KERNELS=0`` (or ``false``/``no``/``off``) is set."""
    return os.environ.get("FCOS_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no",
                                                                           "off")


def _compile_flags() -> list[str]:
    # no FMA contraction: batch_norm_act.cpp evaluates one expression in two loops and needs
    # the same float result in both (the ReLU mask)
    flags = ["-O3", "-ffp-contract=off"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        flags.append("-march=native")
    return flags


def _build_name() -> str:
    """``fcos_kernels_<hash>`` of this CPU's instruction sets, torch's version, the compile
    flags and the sources' contents."""
    import torch

    cpu_flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                cpu_flags = line
                break
    except OSError:
        pass
    digest = hashlib.sha1(f"{platform.machine()} {cpu_flags} {torch.__version__} "
                          f"{_compile_flags()}".encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(SOURCES[0].with_name("common.h").read_bytes())
    return f"fcos_kernels_{digest.hexdigest()[:12]}"


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` dependency installs it next to the
    interpreter, which is not on PATH when the venv's python runs without activation."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja  # the PyPI package: a binary in ninja.BIN_DIR
    except ImportError:
        return  # the build fails with torch's own "Ninja is required" message
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def available(verbose: bool = False) -> bool:
    """Build (the first time on this machine) and load the kernels; True once every op of
    :data:`OPS` is registered. A failure is reported once (``RuntimeWarning``) and not
    retried in this process."""
    if _state["available"] is not None:
        return _state["available"]
    with _lock:
        if _state["available"] is not None:
            return _state["available"]
        if not enabled_by_environment():
            _state["available"], _state["error"] = False, "FCOS_CPU_KERNELS=0"
            return False
        start = time.perf_counter()
        try:
            import torch

            # importing cpp_extension under a CUDA build of torch on a machine without CUDA
            # logs "No CUDA runtime is found": true, and irrelevant to these CPU kernels
            cpp_logger = logging.getLogger("torch.utils.cpp_extension")
            level = cpp_logger.level
            cpp_logger.setLevel(logging.ERROR)
            try:
                from torch.utils import cpp_extension
            finally:
                cpp_logger.setLevel(level)

            _put_ninja_on_path()

            cpp_extension.load(name=_build_name(), sources=[str(s) for s in SOURCES],
                               extra_cflags=_compile_flags(), is_python_module=False,
                               verbose=verbose)
            missing = [op for op in OPS if not hasattr(torch.ops.fcos_kernels, op)]
            if missing:
                raise RuntimeError(f"the built extension lacks {missing}")
            _state["available"] = True
        except Exception as exc:  # no compiler, no ninja, an unwritable cache folder...
            _state["available"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(
                "fcos: the C++ kernels for CPU training could not be built, so training runs "
                "the stock PyTorch ops (same results, slower). Install a C++ compiler "
                "(Debian: apt install g++) or set FCOS_CPU_KERNELS=0 to silence this. "
                f"Cause: {_state['error'][:800]}", RuntimeWarning, stacklevel=2)
        seconds = time.perf_counter() - start
        if _state["available"] and seconds > 2.0:
            from fcos_core.logging_setup import get_logger

            # the first build takes ~15 s: say where the time went
            get_logger("fcos.kernels").info("cpu_kernels_ready", seconds=round(seconds, 1))
        return _state["available"]


def error() -> str | None:
    """Why the kernels are unavailable (None while available or not yet tried)."""
    return _state["error"]


def main() -> int:
    """``python -m fcos_core.models.cpu_kernels``: build the kernels now (verbose)."""
    ok = available(verbose=True)
    print("fcos CPU training kernels:", "ready" if ok else f"unavailable ({error()})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
