"""``fcos run --nproc-per-node N``: start N training processes with torchrun's own launcher.

The command line is handed to ``torch.distributed.run`` (the module behind ``torchrun``), which
starts ``python -m fcos_core run ...`` N times with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set;
each child sees ``LOCAL_RANK`` and runs the pipeline instead of launching again. Alone on one
machine it uses torchrun's ``--standalone`` rendezvous. For several machines, either call
``torchrun`` directly (see :mod:`fcos_core.engine.ddp_trainer`) or pass torchrun options
through ``FCOS_TORCHRUN_ARGS``, e.g.
``FCOS_TORCHRUN_ARGS="--nnodes 2 --rdzv-backend c10d --rdzv-endpoint host:29400 --rdzv-id r1"``.

The exit code is 0 when every process succeeded, else that of a failed process (2 when any
failed with a user error).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import threading

_RDZV_FLAGS = (
    "--nnodes",
    "--rdzv-endpoint",
    "--rdzv_endpoint",
    "--rdzv-backend",
    "--rdzv_backend",
    "--master-addr",
    "--master_addr",
    "--standalone",
)


def child_argv(args: argparse.Namespace) -> list[str]:
    """The ``fcos`` arguments each child process runs with (without --nproc-per-node)."""
    out: list[str] = []
    if getattr(args, "debug", False):
        out.append("--debug")
    out += ["run", str(args.config), *[str(o) for o in (args.overrides or [])]]
    if getattr(args, "stage", None):
        out += ["--stage", str(args.stage)]
    if getattr(args, "run_dir", None):
        out += ["--run-dir", str(args.run_dir)]
    if getattr(args, "resume", False):
        out.append("--resume")
    if getattr(args, "overwrite", False):
        out.append("--overwrite")
    thp = getattr(args, "thp", None)
    if thp is not None:  # the children decide for themselves (it is not exported)
        out.append("--thp" if thp else "--no-thp")
    return out


def torchrun_argv(args: argparse.Namespace, entry_module: str = "fcos_core") -> list[str]:
    """torchrun's command line for this run."""
    extra = shlex.split(os.environ.get("FCOS_TORCHRUN_ARGS", ""))
    argv = ["--nproc-per-node", str(int(args.nproc_per_node)), *extra]
    if not any(a.split("=")[0] in _RDZV_FLAGS for a in extra):
        argv.append("--standalone")
    return [*argv, "-m", entry_module, *child_argv(args)]


def launch_with_torchrun(args: argparse.Namespace, entry_module: str = "fcos_core") -> int:
    """Run ``args`` in ``args.nproc_per_node`` processes; returns the exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from fcos_core.engine.step_interrupts import restore_signal_handlers, saved_signal_handlers

    targs = torchrun.get_args_parser().parse_args(torchrun_argv(args, entry_module))
    # torchrun's agent installs its own SIGINT/SIGTERM/... handlers and leaves them behind;
    # put ours back, so a caller in the same process (a notebook, a test) keeps Ctrl-C
    on_main_thread = threading.current_thread() is threading.main_thread()
    before = saved_signal_handlers((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))
    try:
        torchrun.run(targs)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        if 2 in codes:
            return 2
        return next((c for c in codes if c), 1) if codes else 1
    finally:
        if on_main_thread:
            restore_signal_handlers(before)
    return 0
