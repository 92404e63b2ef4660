"""``fcos build-kernels``: build fcos's C++ CPU training kernels ahead of time.

For container images and machines that should not compile during their first training run:
it builds :mod:`fcos_core.models.cpu_kernels` (or loads this machine's cached build), then
prints where the cache is and how long it took. Needs the ``fcos-core[cpu-kernels]`` extra
(ninja) and a C++ compiler; without them it fails with a message that says what to install.
The cache is keyed by this CPU's instruction sets, torch's version and the sources, so an image
run on another CPU model builds again on first use (or runs the stock ops where it cannot).

Importing this module does not import torch (the command body does).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from fcos_core.errors import FcosUserError


def report_build(verbose: bool = False, out: TextIO | None = None) -> int:
    """Build (or load the cached build of) the kernels and print the cache folder and the time.

    Raises:
        FcosUserError: ninja or the C++ compiler is missing, or the build failed.
    """
    from fcos_core.models import cpu_kernels

    out = out or sys.stdout
    try:
        result = cpu_kernels.build(verbose=verbose)
    except cpu_kernels.KernelsUnavailable as exc:
        raise FcosUserError(
            f"cannot build fcos's C++ CPU training kernels: {exc}", hint=cpu_kernels.ENABLE_HINT
        ) from None
    except Exception as exc:  # a compiler error, an unwritable cache: one message
        raise FcosUserError(
            f"building fcos's C++ CPU training kernels failed: {type(exc).__name__}: "
            f"{str(exc)[-2000:]}",
            hint="run `fcos build-kernels --verbose` to see the compiler's output; check that "
            "the compiler works and that TORCH_EXTENSIONS_DIR (the cache) is writable",
        ) from exc
    how = "loaded from the cache" if result.cached else "built"
    print(f"fcos CPU training kernels: {how} in {result.seconds:.1f} s", file=out)
    print(
        f"cache: {result.folder} (set TORCH_EXTENSIONS_DIR to move it; the folder name "
        "carries a hash of this CPU's instruction sets, torch's version and the sources)",
        file=out,
    )
    if not cpu_kernels.enabled_by_environment():
        print("note: FCOS_CPU_KERNELS is set to off here, so training will not use them", file=out)
    return 0


def build_kernels_command(args: argparse.Namespace, host: object = None) -> int:
    """Entry point of ``fcos build-kernels`` (``host``: the plugin host, unused)."""
    return report_build(verbose=bool(args.verbose))
