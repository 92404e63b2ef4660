"""Build and load fcos's C++ kernels for eager CPU training (``torch.ops.fcos_kernels``).

The kernels (``csrc/``) speed up what ATen does slowly on CPU for this network:

* ``batch_norm_act_forward`` / ``batch_norm_act_backward``: training-mode BatchNorm2d with the
  ReLU fused in, on channels-last tensors (:mod:`fcos_core.models.fast_batchnorm`);
* ``depthwise_weight_grad``: the weight gradient of a depthwise conv on channels-last tensors
  (:mod:`fcos_core.models.fast_conv`).

They are optional: building them needs ``ninja`` (the ``fcos-core[cpu-kernels]`` extra, which
``make setup`` installs) and a C++ compiler (``$CXX``, else ``c++``, on PATH). Where either is
missing (:func:`missing_requirements`), training runs the stock PyTorch ops -- the same values,
slower -- and one log note per process (``cpu_kernels_not_installed``) says how to enable
them. A GPU run never asks for them: only eager CPU float32 training does.

They are compiled on first use with ``torch.utils.cpp_extension`` (about 15 s with two cores;
cached in torch's extension folder, ``TORCH_EXTENSIONS_DIR``, and reused by later runs and by
every DDP rank). ``fcos build-kernels`` (:func:`build`) builds them ahead of time, e.g. in a
container image. The build uses ``-march=native``, so the extension's name carries a hash of
this CPU's instruction sets and of torch's version: a shared home folder never hands one
machine's build to another (an image built on another CPU model builds again on first use).

Builds and loads happen under an OS file lock (``.<name>.fcos-lock`` next to the build folder,
``flock``: released by the kernel when its holder dies, so a build killed half-way never blocks
later runs; waiting for another process's build gives up after ``FCOS_CPU_KERNELS_LOCK_TIMEOUT``
seconds, default 600). Under that lock a FileBaton ``lock`` file (what older torch releases
lock with, and wait on forever) can only be left over from a killed build, so it is
removed. A cached build that cannot be loaded (a truncated library from a killed build, a
partial one) is deleted -- only when the folder is the one torch made for this extension and
holds nothing but build outputs -- and rebuilt once, instead of warning in every later run.

Where the requirements are there but the build fails (a compiler error, an unwritable cache
folder) a ``RuntimeWarning`` names the cause once and training uses the stock modules.
``FCOS_CPU_KERNELS=0`` switches them off (no build, no note).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import platform
import re
import shlex
import shutil
import struct
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = tuple(
    Path(__file__).with_name("csrc") / name
    for name in ("batch_norm_act.cpp", "depthwise_weight_grad.cpp")
)
#: ops the extension must register (a stale or partial build is treated as unavailable)
OPS = ("batch_norm_act_forward", "batch_norm_act_backward", "depthwise_weight_grad")

#: a kernel splits its rows over threads only in chunks of at least this many elements: below
#: it, waking a sleeping OpenMP thread (~0.2 ms under OMP_WAIT_POLICY=PASSIVE) costs more than
#: the second thread saves (tuned on the seed's backbone + neck, docs/benchmarks.md)
MIN_ELEMENTS_PER_THREAD = 1 << 16

#: what installs the kernels' Python-side requirement (ninja)
EXTRA = "fcos-core[cpu-kernels]"
#: how to enable the kernels, for the note and for ``fcos build-kernels``'s error
ENABLE_HINT = (
    f"pip install '{EXTRA}' (ninja) and a C++ compiler (Debian/Ubuntu: apt install "
    "g++; or point $CXX at one)"
)

_lock = threading.Lock()
_state: dict[str, Any] = {"available": None, "error": None}


class KernelsUnavailable(RuntimeError):
    """What building the kernels needs is not installed (:func:`missing_requirements`)."""


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: ``folder`` is the extension's cache folder (the ``.so`` in it),
    ``seconds`` the wall time of the build or load, ``cached`` whether a finished build was
    there before (then it was loaded, not compiled)."""

    folder: Path
    seconds: float
    cached: bool


def enabled_by_environment() -> bool:
    """False when ``FCOS_CPU_KERNELS=0`` (or ``false``/``no``/``off``) is set."""
    return os.environ.get("FCOS_CPU_KERNELS", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


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
    digest = hashlib.sha1(
        f"{platform.machine()} {cpu_flags} {torch.__version__} {_compile_flags()}".encode()
    )
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(SOURCES[0].with_name("common.h").read_bytes())
    return f"fcos_kernels_{digest.hexdigest()[:12]}"


def _ninja_bin_dir() -> str | None:
    """The folder of the ``ninja`` binary of the PyPI package (the extra's requirement), which
    pip puts next to the interpreter: not on PATH when a venv's python runs unactivated."""
    try:
        ninja = importlib.import_module("ninja")
    except ImportError:
        return None
    bin_dir = getattr(ninja, "BIN_DIR", None)
    return bin_dir if bin_dir and shutil.which("ninja", path=bin_dir) else None


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH: add the PyPI package's binary where PATH lacks one."""
    if shutil.which("ninja") is not None:
        return
    bin_dir = _ninja_bin_dir()
    if bin_dir is not None:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _compiler() -> str:
    """The C++ compiler torch's build runs: ``$CXX`` (its first word), else ``c++``."""
    words = shlex.split(os.environ.get("CXX", "") or "c++")
    return words[0] if words else "c++"


def missing_requirements() -> list[str]:
    """What building the kernels needs and this machine lacks (empty: all there): ``ninja``
    (on PATH or the PyPI package) and the C++ compiler (:func:`_compiler`). Checked without
    importing torch or running anything."""
    missing = []
    if shutil.which("ninja") is None and _ninja_bin_dir() is None:
        missing.append("ninja")
    compiler = _compiler()
    if shutil.which(compiler) is None:
        missing.append(f"a C++ compiler ({compiler!r} is not on PATH)")
    return missing


class _MissingOps(RuntimeError):
    """The library loaded but does not register every op of :data:`OPS`."""


#: what torch's build leaves in an extension's cache folder (anything else: not ours to delete)
_BUILD_FILES = re.compile(r"(build\.ninja|\.ninja_log|\.ninja_deps|lock|.+\.(o|so|d))")


def _lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("FCOS_CPU_KERNELS_LOCK_TIMEOUT", "600")))
    except ValueError:
        return 600.0


@contextlib.contextmanager
def _build_lock(path: Path, timeout: float) -> Iterator[None]:
    """An OS lock (``flock``) on ``path``, held while building or loading: the kernel drops it
    when its holder dies, so a killed build never blocks later runs; waiting is bounded."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock only
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"waited {timeout:.0f} s for another process building the kernels "
                        f"(lock {path}); set FCOS_CPU_KERNELS_LOCK_TIMEOUT to wait longer"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _build_directory(cpp_extension: Any, name: str) -> Path:
    """The folder torch builds extension ``name`` in (its own rule; created if missing)."""
    get = getattr(cpp_extension, "_get_build_directory", None)
    if get is not None:
        return Path(get(name, False))
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_our_cache(build_dir: Path, name: str) -> bool:
    """``build_dir`` is the cache folder torch made for our extension ``name`` and holds only
    build outputs (so deleting it deletes nothing else)."""
    if build_dir.name != name or build_dir.is_symlink() or not build_dir.is_dir():
        return False
    if not re.fullmatch(r"fcos_kernels_[0-9a-f]{12}", name):
        return False
    return all(
        _BUILD_FILES.fullmatch(p.name) and p.is_file() and not p.is_symlink()
        for p in build_dir.iterdir()
    )


def _library_cut_short(lib: Path) -> bool:
    """An ELF library shorter than its own header says (a link killed half-way): loading it
    would crash the process (SIGBUS), not raise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(lib, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return True
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit: e_shoff at 0x28, e_shentsize/e_shnum at 0x3A/0x3C
        (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    else:
        (shoff,) = struct.unpack_from(order + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x2E)
    return shoff + shentsize * shnum > size


def _load_once(cpp_extension: Any, kwargs: dict[str, Any]) -> None:
    import torch

    cpp_extension.load(**kwargs)
    missing = [op for op in OPS if not hasattr(torch.ops.fcos_kernels, op)]
    if missing:
        raise _MissingOps(f"the built extension lacks {missing}")


def _load(cpp_extension: Any, verbose: bool) -> None:
    """Build (if needed) and load the extension under our lock. A cached build that cannot be
    loaded (a truncated library from a killed build, say) is deleted and rebuilt once, instead
    of failing the same way in every later run."""
    name = _build_name()
    build_dir = _build_directory(cpp_extension, name)
    kwargs = dict(
        name=name,
        sources=[str(s) for s in SOURCES],
        extra_cflags=_compile_flags(),
        is_python_module=False,
        verbose=verbose,
        build_directory=str(build_dir),
    )
    with _build_lock(build_dir.parent / f".{name}.fcos-lock", _lock_timeout()):
        baton = build_dir / "lock"
        if not hasattr(cpp_extension, "FileLock") and baton.is_file():
            # a torch that locks with FileBaton (a file whose mere existence blocks, forever):
            # every fcos build holds our lock, so this one was left by a killed build
            baton.unlink()
        lib = build_dir / f"{name}.so"
        if lib.is_file() and _library_cut_short(lib) and _is_our_cache(build_dir, name):
            _clear_cache(cpp_extension, build_dir, name, "the cached library is cut short")
        had_build = any(build_dir.glob("*.so")) or any(build_dir.glob("*.o"))
        try:
            _load_once(cpp_extension, kwargs)
        except Exception as exc:
            names_cache = isinstance(exc, _MissingOps) or str(build_dir) in str(exc)
            if not (had_build and names_cache and _is_our_cache(build_dir, name)):
                raise
            _clear_cache(cpp_extension, build_dir, name, f"{type(exc).__name__}: {str(exc)[:300]}")
            _load_once(cpp_extension, kwargs)


def _clear_cache(cpp_extension: Any, build_dir: Path, name: str, cause: str) -> None:
    """Delete our extension's cache folder so that the next load builds it afresh."""
    from fcos_core.logging_setup import get_logger

    get_logger("fcos.kernels").warning(
        "cpu_kernels: the cached build cannot be loaded; deleting it and rebuilding",
        folder=str(build_dir),
        cause=cause,
    )
    shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    versions = getattr(getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None), "entries", None)
    if isinstance(versions, dict):  # else torch thinks this process built it already
        versions.pop(name, None)


def _import_cpp_extension() -> Any:
    # importing cpp_extension under a CUDA build of torch on a machine without CUDA logs "No
    # CUDA runtime is found": true, and irrelevant to these CPU kernels
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)
    return cpp_extension


def _build_unlocked(verbose: bool) -> BuildResult:
    """:func:`build` without taking :data:`_lock` (the caller holds it)."""
    missing = missing_requirements()
    if missing:
        raise KernelsUnavailable(f"not installed: {', '.join(missing)}")
    start = time.perf_counter()
    cpp_extension = _import_cpp_extension()
    _put_ninja_on_path()
    name = _build_name()
    folder = _build_directory(cpp_extension, name)
    lib = folder / f"{name}.so"
    cached = lib.is_file() and not _library_cut_short(lib)
    _load(cpp_extension, verbose)
    _state["available"], _state["error"] = True, None
    return BuildResult(folder=folder, seconds=time.perf_counter() - start, cached=cached)


def build(verbose: bool = False) -> BuildResult:
    """Build the kernels now (or load this machine's cached build) and register their ops in
    this process, whatever ``FCOS_CPU_KERNELS`` says: ``fcos build-kernels``.

    Raises:
        KernelsUnavailable: ninja or the C++ compiler is missing (:func:`missing_requirements`).
        Exception: what the build raised (a compiler error, an unwritable cache folder, ...).
    """
    with _lock:
        return _build_unlocked(verbose)


def available(verbose: bool = False) -> bool:
    """Build (the first time on this machine) and load the kernels; True once every op of
    :data:`OPS` is registered. Decided once per process: without ninja or a compiler one log
    note (``cpu_kernels_not_installed``) says how to enable them; a failed build is reported
    once (``RuntimeWarning``); neither is retried."""
    if _state["available"] is not None:
        return _state["available"]
    with _lock:
        if _state["available"] is not None:
            return _state["available"]
        if not enabled_by_environment():
            _state["available"], _state["error"] = False, "FCOS_CPU_KERNELS=0"
            return False
        missing = missing_requirements()
        if missing:
            from fcos_core.logging_setup import get_logger

            _state["available"] = False
            _state["error"] = f"not installed: {', '.join(missing)}"
            get_logger("fcos.kernels").info(
                "cpu_kernels_not_installed",
                note="CPU training runs the stock PyTorch ops (same results; fcos's C++ "
                "kernels make a training step up to ~1.3x faster)",
                missing=", ".join(missing),
                enable=ENABLE_HINT,
                silence="FCOS_CPU_KERNELS=0",
            )
            return False
        try:
            result = _build_unlocked(verbose)
        except Exception as exc:  # noqa: BLE001 - any build failure: stock ops, reported once
            _state["available"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(
                "fcos: the C++ kernels for CPU training could not be built, so training runs "
                "the stock PyTorch ops (same results, slower). `fcos build-kernels --verbose` "
                "shows the compiler's output; FCOS_CPU_KERNELS=0 silences this. "
                f"Cause: {_state['error'][:800]}",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        if result.seconds > 2.0:
            from fcos_core.logging_setup import get_logger

            # the first build takes ~15 s: say where the time went
            get_logger("fcos.kernels").info(
                "cpu_kernels_ready", seconds=round(result.seconds, 1), folder=str(result.folder)
            )
        return True


def error() -> str | None:
    """Why the kernels are unavailable (None while available or not yet tried)."""
    return _state["error"]


def main() -> int:
    """``python -m fcos_core.models.cpu_kernels``: ``fcos build-kernels --verbose``."""
    from fcos_core.cli.build_kernels_cmd import report_build

    return report_build(verbose=True)


if __name__ == "__main__":
    raise SystemExit(main())
