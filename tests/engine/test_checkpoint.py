"""Checkpoint: best/last selection, atomic writes, weights_only loading, the file layout."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import ctx_for, tiny_trainer

from fcos_core.engine.callbacks.base import Callback
from fcos_core.engine.callbacks.checkpoint import Checkpoint
from fcos_core.engine.checkpoint_io import atomic_save, load_file


class _FakeValidation(Callback):
    """Sets a scripted validation result at every epoch end."""

    def __init__(self, values):
        self.values = list(values)

    def on_epoch_end(self, loop):
        loop.state.val_results = {"mAP": self.values[loop.state.epoch]}
        loop.state.val_count += 1


@pytest.mark.parametrize(
    "mode,values,best_epoch",
    [("max", [0.1, 0.5, 0.3], 1), ("min", [0.4, 0.5, 0.2], 2), ("max", [0.9, 0.5, 0.3], 0)],
)
def test_best_and_last(tmp_path, mode, values, best_epoch):
    ckpt = Checkpoint(save_dir=str(tmp_path / "ckpt"), mode=mode, monitor_metric_key="mAP")
    trainer = tiny_trainer(
        tmp_path, callbacks=[ckpt, _FakeValidation(values)], num_epochs=len(values)
    )
    trainer.run(ctx_for(tmp_path))
    last = load_file(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar")
    best = load_file(tmp_path / "ckpt" / "float-checkpoint-best.pth.tar")
    assert last["finished"] and last["epoch"] == len(values)
    assert last["global_step"] == 2 * len(values)
    assert best["metric"] == pytest.approx(values[best_epoch])
    assert best["epoch"] == best_epoch + 1 and not best["finished"]
    assert ckpt.best == pytest.approx(values[best_epoch])
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(last["state_dict"][k], v)
    # the layout the resume and the next stage rely on
    assert {
        "state_dict",
        "optimizer",
        "callbacks",
        "rng",
        "data_seed",
        "batch_in_epoch",
        "qstate",
    } <= set(last)
    assert last["qstate"] == "float" and isinstance(last["rng"]["torch"], torch.Tensor)


def test_interval_prefix_and_no_monitor(tmp_path):
    ckpt = Checkpoint(save_dir=str(tmp_path / "c"), name_prefix="x-", save_interval_steps=1)
    saved = []
    orig = ckpt.save

    def spy(loop, **kw):
        saved.append((loop.state.global_step, kw.get("epoch_done", False)))
        return orig(loop, **kw)

    ckpt.save = spy
    trainer = tiny_trainer(tmp_path, callbacks=[ckpt], num_epochs=1, n=12)
    trainer.run(ctx_for(tmp_path))
    assert saved == [(1, False), (2, False), (3, True), (3, False)]
    assert (tmp_path / "c" / "x-checkpoint-best.pth.tar").is_file()  # no key: best == last


def test_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pth.tar"
    atomic_save({"w": torch.ones(2)}, path)

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth.tar"]  # no temporary left


def test_checkpoint_files_refuse_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth.tar"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    from fcos_core.errors import FcosUserError

    with pytest.raises(FcosUserError, match="cannot read"):
        load_file(path)


def test_checkpoint_arguments():
    with pytest.raises(ValueError, match="mode"):
        Checkpoint(save_dir="x", mode="up")
    with pytest.raises(ValueError, match="nothing would be saved"):
        Checkpoint(save_dir="x", save_last=False, keep_best=False)
