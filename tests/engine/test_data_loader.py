"""Samplers and the resumable DataLoader against torch's own samplers and a full pass."""

from __future__ import annotations

import pytest
import torch
import torch.utils.data as tud
from engine_standins import TinySet

from fcos_core.engine.data_loader import DataLoader
from fcos_core.engine.samplers import DistributedSampler, RandomSampler, SequentialSampler


@pytest.mark.parametrize(
    "n,world,shuffle,drop_last",
    [
        (10, 3, True, False),
        (10, 3, False, False),
        (10, 3, True, True),
        (12, 4, True, False),
        (2, 3, False, False),
    ],
)
def test_distributed_sampler_matches_torch(n, world, shuffle, drop_last):
    data = list(range(n))
    for rank in range(world):
        ours = DistributedSampler(
            data, shuffle=shuffle, drop_last=drop_last, num_replicas=world, rank=rank
        )
        ref = tud.DistributedSampler(
            data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5, drop_last=drop_last
        )
        ours.set_seed(5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
            assert len(ours) == len(ref)


def test_random_sampler_is_a_seeded_permutation():
    s = RandomSampler(list(range(20)))
    s.set_seed(1)
    a, b = s.indices(0), s.indices(1)
    assert sorted(a) == list(range(20)) and a != b
    assert s.indices(0) == a  # pure function of (seed, epoch)
    assert SequentialSampler(list(range(5))).indices(7) == [0, 1, 2, 3, 4]


def test_distributed_sampler_without_group_reads_everything():
    s = DistributedSampler(list(range(7)))
    assert sorted(s.indices(0)) == list(range(7))
    assert len(s) == 7


def _collect(loader, epoch, start=0):
    loader.set_epoch(epoch)
    return list(loader.iter_from(start))


def test_resume_skips_batches_and_reproduces_augmentation():
    ds = TinySet(n=10, size=8, augment=True)
    loader = DataLoader(ds, batch_size=3, shuffle=True, seed=11)
    full = _collect(loader, 2)
    part = _collect(loader, 2, start=2)
    assert len(full) == 4 and len(part) == 2
    for a, b in zip(full[2:], part):
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["img_id"], b["img_id"])
    other = _collect(loader, 3)
    assert not torch.equal(other[0]["img"], full[0]["img"])  # new epoch, new order/augment


def test_workers_give_the_same_batches_as_the_main_process():
    ds = TinySet(n=8, size=8, augment=True)
    main = _collect(DataLoader(ds, batch_size=2, shuffle=True, seed=3), 1, start=1)
    workers = _collect(
        DataLoader(ds, batch_size=2, shuffle=True, seed=3, num_workers=2), 1, start=1
    )
    assert len(main) == len(workers) == 3
    for a, b in zip(main, workers):
        assert torch.equal(a["img"], b["img"])


def test_loading_does_not_touch_the_global_generators():
    ds = TinySet(n=4, size=8)
    loader = DataLoader(ds, batch_size=2, shuffle=True, seed=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _collect(loader, 0)
    assert torch.equal(torch.rand(3), expected)


def test_lazy_sampler_and_argument_errors():
    from fcos_core.schema import LazyComponent

    ds = TinySet(n=6)
    lazy = LazyComponent(lambda **kw: SequentialSampler(kw["dataset"]), "SequentialSampler", "x")
    loader = DataLoader(ds, sampler=lazy, batch_size=4, drop_last=True)
    assert isinstance(loader.sampler, SequentialSampler) and len(loader) == 1
    with pytest.raises(ValueError, match="persistent_workers"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)


def test_workers_are_kept_between_epochs_by_default():
    ds = TinySet(n=8, size=8, augment=True)
    kept = DataLoader(ds, batch_size=2, shuffle=True, seed=3, num_workers=1)
    assert kept._loader.persistent_workers is True
    first = _collect(kept, 0)
    second = _collect(kept, 1)
    # a kept worker serves the next epoch, and its items are still seeded per (epoch, index)
    fresh = DataLoader(
        ds, batch_size=2, shuffle=True, seed=3, num_workers=1, persistent_workers=False
    )
    assert fresh._loader.persistent_workers is False
    for a, b in zip(first + second, _collect(fresh, 0) + _collect(fresh, 1)):
        assert torch.equal(a["img"], b["img"])
    assert DataLoader(ds, batch_size=2)._loader.persistent_workers is False  # no workers
