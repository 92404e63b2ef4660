"""Argument schemas of the data loader and the samplers (torch-free)."""

from __future__ import annotations

from typing import Any

import attrs

from fcos_core.schema import arg, component, named


@attrs.frozen(kw_only=True)
class DataLoaderArgs:
    """Batches a dataset; resumable mid-epoch, with reproducible per-sample random streams."""

    dataset: Any = component("datasets", help="the dataset (items are dicts)")
    sampler: Any = component(
        "samplers",
        None,
        lazy=True,
        help="order of the items; built with dataset=... (null: by shuffle)",
    )
    batch_size: int = arg(1, help="items per batch (per process in distributed runs)")
    shuffle: bool = arg(False, help="shuffle each epoch when no sampler is given")
    num_workers: int = arg(0, help="worker processes that load items (0: in the main process)")
    pin_memory: bool = arg(False, help="page-locked batches for faster copies to CUDA")
    collate_fn: Any = named("collates", None, help="list of items -> batch (null: torch default)")
    drop_last: bool = arg(False, help="drop the last incomplete batch")
    persistent_workers: bool | None = arg(
        None,
        help="keep workers alive between epochs (null: yes when num_workers > 0, which "
        "saves a fork of the training process, and its copy-on-write page faults, "
        "per epoch and per validation)",
    )
    prefetch_factor: int | None = arg(None, help="batches each worker loads ahead")
    seed: int | None = arg(None, help="seed of order and augmentation (null: the run's seed)")


@attrs.frozen(kw_only=True)
class DistributedSamplerArgs:
    """Each process takes every world_size-th item (a plain shuffle when not distributed)."""

    shuffle: bool = arg(True, help="shuffle the whole dataset each epoch before splitting")
    drop_last: bool = arg(False, help="drop the tail instead of padding it with repeated items")
    num_replicas: int | None = arg(None, help="number of processes (null: the world size)")
    rank: int | None = arg(None, help="this process's rank (null: from torch.distributed)")


@attrs.frozen(kw_only=True)
class RandomSamplerArgs:
    """A new random order of all items each epoch."""


@attrs.frozen(kw_only=True)
class SequentialSamplerArgs:
    """Items in dataset order."""
