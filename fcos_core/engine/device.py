"""Choosing a device and moving batches to it."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """``None`` -> CUDA (this process's local GPU) when present, else CPU; ``cuda`` in a
    distributed run -> ``cuda:<local_rank>``."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(
            f"device {requested!r} is not a torch device ({exc}); use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {requested!r} was asked for but CUDA is not available; "
                "use device: null (auto) or cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors inside dicts/lists/tuples moved to ``device`` (non-blocking); others as they are."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    return value


def batch_size_of(batch: Any) -> int:
    """Number of images in a batch (the first dimension of ``img`` or of the first tensor)."""
    if isinstance(batch, dict):
        img = batch.get("img")
        if isinstance(img, torch.Tensor) and img.dim() > 0:
            return int(img.shape[0])
        for v in batch.values():
            n = batch_size_of(v)
            if n:
                return n
        return 0
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, (list, tuple)):
        if batch and all(isinstance(b, dict) for b in batch):
            return sum(batch_size_of(b) for b in batch)
        return len(batch)
    return 0
