"""The ``DataLoader`` component: torch's DataLoader, made resumable and reproducible.

Two things make a killed run resume to exactly the weights of an uninterrupted one:

* the order of an epoch is a pure function of (seed, epoch) (see :mod:`.samplers`), and
  :meth:`DataLoader.iter_from` skips the batches already seen without loading them;
* every item is loaded with the global ``random``/``numpy``/``torch`` generators seeded from
  (seed, epoch, item index), so random augmentation does not depend on which worker loads an
  item or on how many batches came before it. In the main process (``num_workers: 0``) those
  generators are restored afterwards, so loading never disturbs the training's own random state.

Worker processes also get a seeded ``worker_init_fn`` and one torch thread each.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from fcos_core.engine.samplers import RandomSampler, SequentialSampler, epoch_indices
from fcos_core.logging_setup import get_logger
from fcos_core.schema import LazyComponent

log = get_logger("fcos.data")


def item_seed(base_seed: int, epoch: int, index: int) -> int:
    """The 32-bit seed of one item's random stream in one epoch."""
    return int(
        np.random.SeedSequence(
            [base_seed & 0xFFFFFFFF, base_seed >> 32, epoch, index]
        ).generate_state(1)[0]
    )


class SeededDataset(tud.Dataset):
    """Wraps a dataset; a key ``(index, base_seed, epoch)`` loads ``index`` with seeded RNGs."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, base_seed, epoch = key
        seed = item_seed(base_seed, epoch, index)
        in_worker = tud.get_worker_info() is not None
        if not in_worker:  # keep the training's random state untouched
            saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if not in_worker:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.random.set_rng_state(saved[2])


class ResumableBatchSampler(tud.Sampler[list]):
    """Batches of one epoch's order, starting at ``start_batch``; keys carry seed and epoch."""

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.seed = 0

    def batches(self) -> list[list[int]]:
        order = epoch_indices(self.sampler, self.epoch)
        bs = self.batch_size
        out = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        return out

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches()[self.start_batch :]:
            yield [(i, self.seed, self.epoch) for i in batch]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _worker_init(worker_id: int) -> None:
    # each worker: one thread (workers x threads must not oversubscribe the cores), and seeded
    # generators for any code that draws outside an item (items re-seed themselves)
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class DataLoader:
    """Batches a dataset; see the module docstring for resume and seeding.

    Args:
        dataset: map-style dataset whose items are dicts.
        sampler: a sampler, or a lazy sampler block built here with ``dataset=``; None picks a
            RandomSampler (``shuffle``) or a SequentialSampler.
        batch_size: items per batch (per process when distributed).
        shuffle: shuffle each epoch when no sampler is given (a sampler decides its own order).
        num_workers: loader worker processes.
        pin_memory: page-locked batches (only when CUDA is available).
        collate_fn: list of items -> batch; None uses torch's default collate.
        drop_last: drop the last incomplete batch.
        persistent_workers: keep workers between epochs; None (the default) keeps them
            whenever ``num_workers > 0``. Why: starting workers forks the training process,
            and after every fork each page the parent writes to is copied on first touch; with
            a model of a few GB that cost the kernel more time than the training itself on
            small data sets (many short epochs, a validation fork every epoch). Items are
            seeded per (seed, epoch, index), so kept workers change no sample.
        prefetch_factor: batches each worker loads ahead (needs num_workers > 0).
        seed: seed of order and augmentation; None takes the run's seed (``set_seed``).
    """

    def __init__(
        self,
        dataset: Any,
        sampler: Any = None,
        batch_size: int = 1,
        shuffle: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn: Callable[[list], Any] | None = None,
        drop_last: bool = False,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(
                f"dataset must be a map-style dataset with len(), got {type(dataset).__name__}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        if num_workers == 0 and persistent_workers:
            raise ValueError(
                "persistent_workers: true needs num_workers > 0; set num_workers "
                "or drop persistent_workers"
            )
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError(
                "prefetch_factor needs num_workers > 0; set num_workers or drop prefetch_factor"
            )
        self.dataset = dataset
        if isinstance(sampler, LazyComponent):
            sampler = sampler.build(dataset=dataset)
        elif sampler is None:
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._config_seed = seed
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.batch_sampler = ResumableBatchSampler(sampler, batch_size, drop_last)
        self.batch_sampler.seed = self.seed
        self._set_sampler_seed()
        # a private generator: creating an iterator must not draw from torch's global RNG
        self._generator = torch.Generator()
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs.update(worker_init_fn=_worker_init, persistent_workers=persistent_workers)
            if prefetch_factor is not None:
                kwargs["prefetch_factor"] = prefetch_factor
        self._loader = tud.DataLoader(
            SeededDataset(dataset),
            batch_sampler=self.batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn if collate_fn is not None else tud.default_collate,
            pin_memory=bool(pin_memory and torch.cuda.is_available()),
            generator=self._generator,
            **kwargs,
        )

    def _set_sampler_seed(self) -> None:
        if hasattr(self.sampler, "set_seed"):
            self.sampler.set_seed(self.seed)

    def set_seed(self, seed: int) -> None:
        """Use the run's seed (unless the config gave this loader its own)."""
        if self._config_seed is None:
            self.seed = int(seed)
            self.batch_sampler.seed = self.seed
            self._set_sampler_seed()

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def iter_from(self, start_batch: int = 0) -> Iterator[Any]:
        """Iterate the current epoch from batch ``start_batch`` (earlier ones are not loaded)."""
        self.batch_sampler.start_batch = int(start_batch)
        self._generator.manual_seed(item_seed(self.seed, self.epoch, -1 & 0xFFFFFFFF))
        return iter(self._loader)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)

    def __len__(self) -> int:
        return len(self.batch_sampler)
