"""Reading a user-supplied file with a bound: regular files only, never more than a cap.

``stat`` is only a first check: the read itself is capped (a file that grows, or a device that
claims size 0 such as /dev/zero, cannot make it read without bound), the file is opened with
``O_NONBLOCK`` (should the path be swapped for a FIFO after the stat, open does not block) and
checked again with ``fstat``. Callers turn :class:`ReadRefused` into their own user errors.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class ReadRefused(Exception):
    """Why a file was not read: ``kind`` is ``missing``, ``unreadable`` (``detail``: the OS's
    reason), ``directory``, ``not_regular`` or ``too_large`` (``detail``: the size seen)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ReadRefused("missing") from None
    except OSError as exc:
        raise ReadRefused("unreadable", str(exc.strerror or exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ReadRefused("directory")
    if not stat.S_ISREG(st.st_mode):
        raise ReadRefused("not_regular")
    if st.st_size > max_bytes:
        raise ReadRefused("too_large", str(st.st_size))
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ReadRefused("unreadable", str(exc.strerror or exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReadRefused("not_regular")
        chunks, total = [], 0
        want = st.st_size + 1  # one read of the stated size, then one that finds the end
        while total <= max_bytes:
            chunk = os.read(fd, min(max_bytes + 1 - total, want))
            want = 64 << 20
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ReadRefused("unreadable", str(exc.strerror or exc)) from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ReadRefused("too_large", f"over {max_bytes}")
    return b"".join(chunks)
