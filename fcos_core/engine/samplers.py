"""Samplers whose order is a pure function of (seed, epoch), so a run resumes exactly.

Each sampler exposes ``indices(epoch) -> list[int]`` besides the usual ``__iter__``; the data
loader asks for one epoch's order, skips the batches a resumed run has already seen, and never
draws from the global random generators. Shuffled orders use ``torch.randperm`` with a
generator seeded by ``seed + epoch``, as ``torch.utils.data.DistributedSampler`` does, so the
orders equal torch's for the same seed.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

from fcos_core.logging_setup import get_logger

log = get_logger("fcos.data")


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


class _EpochSampler(Sampler[int], abc.ABC):
    """Common state: the dataset, the epoch and the seed (set by the data loader)."""

    def __init__(self, dataset: Sized) -> None:
        self.dataset = dataset
        self.epoch = 0
        self.seed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    @abc.abstractmethod
    def indices(self, epoch: int) -> list[int]:
        """The dataset indices of ``epoch``, in order (deterministic for a seed)."""

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch))

    def __len__(self) -> int:
        return len(self.dataset)


class SequentialSampler(_EpochSampler):
    """Items in dataset order, every epoch."""

    def indices(self, epoch: int) -> list[int]:
        return list(range(len(self.dataset)))


class RandomSampler(_EpochSampler):
    """All items in a new random order each epoch (``randperm`` seeded by seed + epoch)."""

    def indices(self, epoch: int) -> list[int]:
        return _permutation(len(self.dataset), self.seed, epoch)


class DistributedSampler(_EpochSampler):
    """Splits one epoch's order between processes: rank ``r`` takes items ``r, r+W, r+2W...``.

    The split is torch's: without ``drop_last`` the order is padded with its own first items to
    a multiple of the world size, with it the tail is dropped. When no process group is
    initialised (a single-process run of a distributed config), it behaves like a
    :class:`RandomSampler` (or :class:`SequentialSampler` with ``shuffle: false``) and says so
    once in the log.
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(dataset)
        if num_replicas is not None and num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if rank is not None and num_replicas is not None and not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank must be in [0, num_replicas), got rank {rank} of {num_replicas}"
            )
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._num_replicas = num_replicas
        self._rank = rank
        self._noted = False

    def world(self) -> tuple[int, int]:
        """(number of processes, this process's rank), resolved when iterating."""
        if self._num_replicas is not None:
            return self._num_replicas, self._rank or 0
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank() if self._rank is None else self._rank
        if not self._noted:
            self._noted = True
            log.info(
                "DistributedSampler without a process group: a single process reads the "
                "whole dataset",
                shuffle=self.shuffle,
            )
        return 1, 0

    def _split(self, n: int, world: int) -> tuple[int, int]:
        """(items per process, total items used)."""
        if self.drop_last and n % world:
            per = n // world
        else:
            per = math.ceil(n / world)
        return per, per * world

    def indices(self, epoch: int) -> list[int]:
        world, rank = self.world()
        n = len(self.dataset)
        order = _permutation(n, self.seed, epoch) if self.shuffle else list(range(n))
        _per, total = self._split(n, world)
        if total > n:  # pad with the order's own head, repeated as often as needed
            pad = total - n
            order = order + (order * math.ceil(pad / max(n, 1)))[:pad]
        else:
            order = order[:total]
        return order[rank:total:world]

    def __len__(self) -> int:
        world, _ = self.world()
        return self._split(len(self.dataset), world)[0]


def epoch_indices(sampler: Any, epoch: int) -> list[int]:
    """One epoch's order of any sampler (ours directly; others through set_epoch + iter)."""
    if isinstance(sampler, _EpochSampler):
        return sampler.indices(epoch)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return list(iter(sampler))
