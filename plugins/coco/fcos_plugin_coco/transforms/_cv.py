"""OpenCV for the transforms, single-threaded.

Each transform works on one image of at most a few megapixels, so cv2's own thread pool buys
little per call and hurts a DataLoader: N workers x the cores' worth of cv2 threads each
oversubscribe the machine (and cv2's pthreads pool does not survive ``fork`` cleanly). The
parallelism that pays is across samples (``num_workers``), so this module turns cv2's
threading off (``cv2.setNumThreads(0)``: every call runs in the calling thread), as YOLOv5 and
detectron2 do for their loaders. It is set once, when the first transform module is imported,
and therefore also holds in forked workers. Set ``FCOS_CV2_THREADS=N`` (N > 0) to give cv2 N
threads instead, e.g. to resize very large images in the main process; ``-1`` keeps cv2's
default.

:func:`scratch` hands out per-thread reusable arrays for intermediate images. A transform's
temporaries (the full resized image before the crop, the HSV planes, the float YUV) are several
MB per sample; allocating them afresh costs page faults whenever the allocator has returned the
previous sample's memory to the OS (glibc does so for large blocks), which on some VMs costs as
much as the arithmetic. Outputs are always new arrays: only temporaries that never leave a
transform use scratch memory.
"""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

_threads = os.environ.get("FCOS_CV2_THREADS", "0").strip() or "0"
try:
    _n = int(_threads)
except ValueError:
    raise ValueError(f"FCOS_CV2_THREADS must be an integer, got {_threads!r}") from None
if _n >= 0:
    cv2.setNumThreads(_n)

#: temporaries larger than this are allocated per call rather than kept
MAX_SCRATCH_BYTES = 32 << 20

_local = threading.local()


def scratch(key: str, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """A C-contiguous array of ``shape`` / ``dtype`` with undefined contents, backed by a buffer
    kept for this thread under ``key`` (grown on demand). It is valid until the next call with
    the same key in the same thread: use it for temporaries that never leave the caller."""
    bufs = _local.__dict__.setdefault("bufs", {})
    entry = bufs.get(key)
    if entry is not None and entry[1] == shape and entry[2] is dtype:
        return entry[3]  # same request as last time (the usual case): no arithmetic
    dt = np.dtype(dtype)
    nbytes = dt.itemsize
    for n in shape:
        nbytes *= int(n)
    if nbytes > MAX_SCRATCH_BYTES:
        return np.empty(shape, dt)
    buf = (
        entry[0]
        if entry is not None and entry[0].nbytes >= nbytes
        else np.empty(max(nbytes, 64), np.uint8)
    )
    view = buf[:nbytes].view(dt).reshape(shape)
    bufs[key] = (buf, shape, dtype, view)
    return view


__all__ = ["cv2", "scratch"]
