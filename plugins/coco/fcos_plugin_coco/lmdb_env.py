"""One read-only LMDB handle per (LMDB, process), shared by every dataset object.

py-lmdb refuses to open the same environment twice in one process, and an environment must
not be used in a child created by ``fork`` (DataLoader workers). So handles live in a
process-wide cache tagged with the pid that opened them: a forked child finds its parent's
handle, closes its copy (which leaves the parent's untouched) and opens its own. The cache key
includes the data file's inode, so an LMDB deleted and re-packed at the same path is reopened.
"""

from __future__ import annotations

import contextlib
import os
import threading

import lmdb

from fcos_core.errors import FcosUserError

_lock = threading.Lock()
_envs: dict[str, tuple[int, int, lmdb.Environment]] = {}  # path -> (pid, inode, env)


def _inode(path: str) -> int:
    try:
        return os.stat(os.path.join(path, "data.mdb")).st_ino
    except OSError:
        return -1


def reader(path: str) -> lmdb.Environment:
    """The read-only environment of the LMDB folder ``path`` for this process."""
    key = os.path.realpath(path)
    pid, inode = os.getpid(), _inode(key)
    with _lock:
        entry = _envs.get(key)
        if entry is not None:
            if entry[0] == pid and entry[1] == inode:
                return entry[2]
            # inherited through fork, or the LMDB was re-packed: drop the old handle
            with contextlib.suppress(lmdb.Error):
                entry[2].close()
            del _envs[key]
        try:
            env = lmdb.open(
                key,
                readonly=True,
                lock=False,
                subdir=True,
                readahead=True,
                meminit=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            raise FcosUserError(
                f"{path} is not a readable LMDB: {exc}", hint="pack it with `fcos pack-coco`"
            ) from exc
        _envs[key] = (pid, inode, env)
        return env


def release(path: str) -> None:
    """Close this process's handle of ``path`` (before re-packing it in the same process)."""
    key = os.path.realpath(path)
    with _lock:
        entry = _envs.pop(key, None)
    if entry is not None and entry[0] == os.getpid():
        entry[2].close()
