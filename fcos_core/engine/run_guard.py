"""What ``fcos run`` checks and sets up before any training, so that nothing is lost.

* :func:`probe_writable`: the checkpoint folder and the run folder are created and a small
  probe file (created, written, fsynced and removed again) proves they can be written -- a full
  disk or a missing permission ends the run at once with the path and the cause, instead of
  after the first epoch.
* :class:`RunLock`: ``<ckpt_dir>/.fcos.lock`` is held (``fcntl.flock``) for the whole run, so a
  second run with the same ``ckpt_dir`` is refused instead of both writing the same
  checkpoints. The kernel drops the lock when its process ends, however it ends, so the file a
  killed run leaves behind blocks nothing; the file itself is left in place (deleting it would
  let two runs lock two different files).
* :func:`existing_checkpoints`: the ``last``/``best`` checkpoints the stages about to be trained
  would replace. Without ``--resume`` (continue them) or ``--overwrite`` (replace them) the run
  stops before training; a re-run never silently replaces a trained model.
* :func:`sigterm_as_interrupt`: SIGTERM (a cluster scheduler's preemption, ``docker stop``)
  raises :class:`Terminated`, a ``KeyboardInterrupt``, so it takes Ctrl-C's path: the trainer
  saves the ``last`` checkpoint of the last finished step and ``fcos run`` exits with code 143
  (Ctrl-C: 130).

In a distributed run only rank 0 probes, locks and checks (it is the process that writes).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

LOCK_NAME = ".fcos.lock"
CHECKPOINT_KINDS = ("last", "best")


# --- writable folders -------------------------------------------------------------------------


def os_error_text(exc: OSError) -> str:
    """The cause of an ``OSError`` in words ("No space left on device")."""
    return exc.strerror or str(exc) or type(exc).__name__


def probe_writable(folder: str | os.PathLike[str], what: str, fix: str) -> Path:
    """Create ``folder`` and write, fsync and remove a probe file in it; a clear
    :class:`FcosUserError` naming ``folder`` and the cause when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fcos-write-probe-", dir=folder)
        try:
            os.write(fd, b"fcos write probe\n" * 256)  # 4 KiB: one block of a full disk
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(folder) else ""
        raise FcosUserError(
            f"the {what} {str(folder)!r} cannot be written{where}: "
            f"{os_error_text(exc)}; nothing was trained",
            hint=f"{fix}, or free disk space / fix the folder's permissions",
        ) from None
    return folder


# --- one run per checkpoint folder ------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.fcos.lock`` holding the owner's pid."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock (documented)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FcosUserError(
                f"cannot create the lock file {str(self.path)!r}: {os_error_text(exc)}",
                hint="make ckpt_dir writable or choose another one",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.read(fd, 64).decode("ascii", "replace").strip()
            except OSError:
                owner = ""
            os.close(fd)
            who = f"process {owner}" if owner.isdigit() else "another process"
            raise FcosUserError(
                f"another fcos run ({who}) is using the checkpoint folder "
                f"{str(self.path.parent)!r}: it holds the lock {str(self.path)!r}",
                hint="wait for that run to end (the lock goes with its process), or give this "
                "run its own checkpoint folder (ckpt_dir=...)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


# --- checkpoints a run would replace ----------------------------------------------------------


def stage_checkpoint_paths(cfg: Any, stage: str, ckpt_dir: Path) -> list[Path]:
    """The ``last``/``best`` files the stage's trainer writes: its ``Checkpoint`` callbacks'
    (``save_dir``, ``name_prefix``) and the default ``<ckpt_dir>/<stage>-checkpoint-*``."""
    from fcos_core.engine.schemas import CheckpointArgs

    places = [(Path(ckpt_dir), f"{stage}-")]
    node = cfg.node(f"{stage}_trainer")
    for cb in (node.kwargs.get("callbacks") or []) if node is not None else []:
        entry = getattr(cb, "entry", None)
        schema = getattr(entry, "schema", None)
        if entry is None or not (isinstance(schema, type) and issubclass(schema, CheckpointArgs)):
            continue
        save_dir = cb.kwargs.get("save_dir")
        if save_dir:
            prefix = cb.kwargs.get("name_prefix")
            places.append((Path(save_dir), f"{stage}-" if prefix is None else str(prefix)))
    out: list[Path] = []
    for folder, prefix in places:
        for kind in CHECKPOINT_KINDS:
            path = folder / f"{prefix}checkpoint-{kind}.pth.tar"
            if all(os.path.abspath(path) != os.path.abspath(p) for p in out):
                out.append(path)
    return out


def existing_checkpoints(cfg: Any, stages: Sequence[str], ckpt_dir: Path) -> list[Path]:
    """Checkpoint files that exist now and that training ``stages`` would replace."""
    found: list[Path] = []
    for stage in stages:
        if stage == "compile" or cfg.node(f"{stage}_trainer") is None:
            continue
        found += [p for p in stage_checkpoint_paths(cfg, stage, ckpt_dir) if p.is_file()]
    return found


def refuse_to_replace(paths: Sequence[Path]) -> None:
    """Raise the error that names ``paths`` and the two ways on (when there are any)."""
    if not paths:
        return
    listing = "".join(f"\n  - {p}" for p in paths)
    raise FcosUserError(
        f"this run would replace {len(paths)} existing checkpoint file(s) of the stages it "
        f"trains; nothing was changed:{listing}",
        hint="add --resume to continue from them, or --overwrite to train again and replace "
        "them (or use another ckpt_dir=...)",
    )


# --- SIGTERM ----------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``fcos run``: handled like Ctrl-C; the CLI exits with ``exit_code``."""

    exit_code = 143  # 128 + SIGTERM, as shells report a process ended by SIGTERM
    signal_name = "SIGTERM"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises :class:`Terminated` (once; a repeated SIGTERM while the
    checkpoint is being saved is ignored). The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            return
        fired.append(signum)
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    if previous is None:  # a handler set outside Python: put the default back
        previous = signal.SIG_DFL
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
