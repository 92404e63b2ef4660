"""The centerness floor: the least centerness loss on the step's soft targets, logged only."""

from __future__ import annotations

import math

import torch

from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.functions import collect_losses
from fcos_core.engine.loop import LoopState
from fcos_core.engine.loss_show import LossShow
from fcos_core.models.loss_dict import LossDict, monitor_values
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss


def _batch(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(2, 3, size, size, generator=g),
        "gt_bboxes": [
            torch.tensor([[4.0, 6, 30, 40], [20, 18, 60, 50]]),
            torch.tensor([[10.0, 10, 50, 50]]),
        ],
        "gt_classes": [torch.tensor([0, 2]), torch.tensor([1])],
        "img_shape": [(size, size)] * 2,
    }


def _entropy(t: float) -> float:
    """Binary entropy in nats, written out (0 ln 0 = 0)."""
    return -sum(p * math.log(p) for p in (t, 1.0 - t) if p > 0)


def test_floor_of_known_targets_is_the_mean_binary_entropy(tiny):
    model = tiny.make_fcos()
    targets = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    num_pos = torch.tensor(4.0)  # the normaliser need not be the element count
    want = sum(_entropy(t) for t in targets.tolist()) / 4.0
    assert math.isclose(float(model.centerness_floor(targets, num_pos)), want, rel_tol=1e-6)
    # it is the loss at the best possible prediction (logit(t)) on targets strictly in (0, 1)
    inner = targets[1:4]
    best = CrossEntropyLoss(use_sigmoid=True)(torch.logit(inner), inner, avg_factor=3.0)
    torch.testing.assert_close(model.centerness_floor(inner, torch.tensor(3.0)), best)


def test_compute_losses_reports_the_floor_of_its_targets(tiny):
    torch.manual_seed(3)
    model = tiny.make_fcos().train()
    b = _batch()
    outputs = model.body(b["img"])
    losses = model.compute_losses(outputs, b["gt_bboxes"], b["gt_classes"])
    t = model.targets(outputs, b["gt_bboxes"], b["gt_classes"])
    pos = t["pos_mask"]
    ctr_t = t["centerness_targets"][pos].tolist()
    want = sum(_entropy(x) for x in ctr_t) / max(len(ctr_t), 1)
    floor = monitor_values(losses)["centerness_floor"]
    assert not floor.requires_grad
    assert math.isclose(float(floor), want, rel_tol=1e-5, abs_tol=1e-7)
    assert float(losses["centerness"].detach()) >= float(floor) - 1e-6  # BCE(x, t) >= H(t)


def test_floor_follows_the_loss_weight(tiny):
    torch.manual_seed(4)
    model = tiny.make_fcos().train()
    b = _batch()
    outputs = model.body(b["img"])
    base = float(
        monitor_values(model.compute_losses(outputs, b["gt_bboxes"], b["gt_classes"]))[
            "centerness_floor"
        ]
    )
    model.loss_centerness.loss_weight = 2.5
    scaled = float(
        monitor_values(model.compute_losses(outputs, b["gt_bboxes"], b["gt_classes"]))[
            "centerness_floor"
        ]
    )
    assert math.isclose(scaled, 2.5 * base, rel_tol=1e-6)


def test_floor_is_not_part_of_the_total_loss(tiny):
    torch.manual_seed(5)
    model = tiny.make_fcos().train()
    losses = model(_batch())
    assert isinstance(losses, LossDict) and set(losses) == {"cls", "reg", "centerness"}
    terms = {k: float(v.detach()) for k, v in losses.items()}
    floor = float(losses.monitor["centerness_floor"])
    assert floor > 0
    # the collector hands exactly the three losses to backward
    collected = collect_losses(losses)
    assert len(collected) == 3
    assert math.isclose(float(sum(collected).detach()), sum(terms.values()), rel_tol=1e-6)

    # the batch processor records the floor next to the terms, outside "loss"
    class _Loop:
        state = LoopState()
        stage = "float"

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model.zero_grad()
    bp = MultiBatchProcessor(need_grad_update=True)
    loop = _Loop()
    torch.manual_seed(5)
    bp(model, _batch(), torch.device("cpu"), opt, loop)
    rec = loop.state.last_losses
    assert set(rec) == {"cls", "reg", "centerness", "loss", "centerness_floor"}
    assert math.isclose(rec["loss"], rec["cls"] + rec["reg"] + rec["centerness"], rel_tol=1e-6)

    # LossShow averages it separately and keeps it out of "loss"
    show = LossShow()
    fake = [
        LossDict(
            {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, monitor={"b_floor": torch.tensor(0.5)}
        ),
        LossDict(
            {"a": torch.tensor(3.0), "b": torch.tensor(4.0)}, monitor={"b_floor": torch.tensor(1.5)}
        ),
    ]
    for out in fake:
        show.update(None, out)
    got = show.compute()
    assert got == {"a": 2.0, "b": 3.0, "loss": 5.0, "b_floor": 1.0}
