"""torch.distributed helpers: joining the process group torchrun set up, and small collectives.

``torchrun`` (or ``fcos run --nproc-per-node N``, which uses torchrun's launcher) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process group
uses NCCL when the processes have GPUs and gloo on CPU.

The process group's timeout (the config's ``dist_timeout_s``, default 1800 s) bounds how long a
process waits in a collective for a peer that went silent (a machine that lost its network, a
hung process); a peer that exits closes its sockets and the others stop at their next
collective. :func:`is_peer_failure` tells those errors apart so ``fcos run`` can end with a
clear message (:class:`~fcos_core.engine.errors.PeerLostError`) instead of a traceback.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when absent)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


#: the default process-group timeout (torch's own default for gloo and NCCL)
DEFAULT_TIMEOUT_S = 1800.0


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group described by the environment; True when distributed.

    ``timeout_s``: how long a collective (and joining the group) waits for the other
    processes before it fails.
    """
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be > 0 seconds, got {timeout_s}")
    rank, world, local_rank = env_world()
    if world <= 1:
        return False
    if dist.is_initialized():
        return True
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says another process of the group stopped or did not answer in time.

    torch raises ``DistError`` subclasses for NCCL and store failures; gloo raises a plain
    ``RuntimeError`` whose text names its source file (``gloo/transport/...``).
    """
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return (
        "gloo" in text
        or "Connection closed by peer" in text
        or ("Timed out" in text and "operation" in text)
    )


def backend_name() -> str:
    """The process group's backend (``gloo``/``nccl``), or ``none``."""
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return "none"


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
