"""DynamicFcosTarget on hand-computed cases, order invariance, and a per-GT-loop reference.

Layout used by the hand-computed cases: a 32x32 input, strides (8, 16). Stride-8 positions sit
at x, y in {4, 12, 20, 28} (indices 0..15, row-major: index = 4*row + col); stride-16 positions
at {8, 24} (indices 16..19).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss

STRIDES = [8, 16]
C = 3
P8 = {(x, y): 4 * (y // 8) + x // 8 for x in (4, 12, 20, 28) for y in (4, 12, 20, 28)}


def make_target(num_classes=C, strides=STRIDES, radius=None, topk=10):
    return DynamicFcosTarget(
        strides=strides,
        cls_out_channels=num_classes,
        background_label=num_classes,
        topK=topk,
        loss_cls=FocalLoss(num_classes=num_classes + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"),
        center_sampling_radius=radius,
    )


def outputs(batch=1, logit=-5.0):
    """Uniform class logits and zero (degenerate) predicted boxes."""
    cls = [torch.full((batch, C, 4, 4), logit), torch.full((batch, C, 2, 2), logit)]
    box = [torch.zeros(batch, 4, 4, 4), torch.zeros(batch, 4, 2, 2)]
    ctr = [torch.zeros(batch, 1, 4, 4), torch.zeros(batch, 1, 2, 2)]
    return [*cls, *box, *ctr]


def set_box(outs, point, pred, b=0):
    """Make the stride-8 position at ``point`` predict the xyxy box ``pred``."""
    x, y = point
    d = torch.tensor([x - pred[0], y - pred[1], pred[2] - x, pred[3] - y]) / 8
    assert (d >= 0).all()
    outs[2][b, :, y // 8, x // 8] = d


def positives(t, b=0):
    return sorted(torch.nonzero(t["pos_mask"][b]).squeeze(1).tolist())


def gts(*boxes_labels):
    boxes = torch.tensor([bl[0] for bl in boxes_labels], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([bl[1] for bl in boxes_labels], dtype=torch.long)
    return [boxes], [labels]


def test_single_box_k1_takes_the_cheapest_class_score():
    outs = outputs()
    outs[0][0, 1, 12 // 8, 12 // 8] = 2.0  # class-1 logit high at (12, 12)
    gb, gl = gts(([2, 2, 14, 14], 1))
    t = make_target()(outs, gb, gl)
    # candidates: (4,4) (12,4) (4,12) (12,12) at stride 8 and (8,8) at 16; IoUs are 0 -> k=1
    assert positives(t) == [P8[(12, 12)]]
    p = P8[(12, 12)]
    assert t["labels"][0, p] == 1 and t["matched_gt"][0, p] == 0
    assert (t["labels"][0, torch.arange(20) != p] == C).all()
    # geometric centerness of (12, 12) in [2, 2, 14, 14]: l=t=10, r=b=2 -> sqrt(.2*.2)
    assert t["bbox_weights"][0, p] == pytest.approx(0.2)
    assert t["centerness_targets"][0, p] == 0.0  # the degenerate predicted box has IoU 0
    torch.testing.assert_close(t["bbox_targets"][0, p], torch.tensor([2.0, 2, 14, 14]))
    assert (t["label_weights"] == 1).all()


def test_dynamic_k_is_floor_of_summed_ious():
    outs = outputs()
    gt = [2.0, 2, 14, 14]
    for pt in [(4, 4), (12, 4), (4, 12)]:
        set_box(outs, pt, gt)  # exact boxes: IoU 1 each -> sum 3 -> k = 3
    t = make_target()(outs, *gts((gt, 0)))
    assert positives(t) == sorted(P8[q] for q in [(4, 4), (12, 4), (4, 12)])
    assert torch.allclose(t["centerness_targets"][0][t["pos_mask"][0]], torch.ones(3))

    # IoUs 0.95, 0.9, 0.85 (boxes inside the gt: GIoU = IoU) -> sum 2.7 -> k = 2, the two best
    outs = outputs()
    for pt, f in [((4, 4), 0.95), ((12, 4), 0.85), ((4, 12), 0.9)]:
        set_box(outs, pt, [2, 2, 14, 2 + 12 * f])
    t = make_target()(outs, *gts((gt, 0)))
    assert positives(t) == sorted([P8[(4, 4)], P8[(4, 12)]])
    got = t["centerness_targets"][0][[P8[(4, 4)], P8[(4, 12)]]]
    torch.testing.assert_close(got, torch.tensor([0.95, 0.9]))

    # topK=2 sums only the two largest IoUs: 0.95 + 0.9 = 1.85 -> k = 1
    t = make_target(topk=2)(outs, *gts((gt, 0)))
    assert positives(t) == [P8[(4, 4)]]


def _conflict_case():
    outs = outputs()
    # (12, 12) predicts the overlap [10, 10, 14, 14]: IoU with A = 16/144, with B = 16/400;
    # every other position predicts a point (GIoU 0), so (12, 12) is the cheapest for both
    set_box(outs, (12, 12), [10, 10, 14, 14])
    return outs, ([2, 2, 14, 14], 0), ([10, 10, 30, 30], 0)


def test_position_claimed_twice_goes_to_the_cheaper_box():
    outs, a, b = _conflict_case()
    t = make_target()(outs, *gts(a, b))
    # A's cost 2*(1 - 1/9) < B's 2*(1 - 1/25) (same class term) -> A wins; B, with k = 1,
    # keeps no position (SimOTA does not re-assign the loser)
    p = P8[(12, 12)]
    assert positives(t) == [p]
    assert t["matched_gt"][0, p] == 0
    assert t["centerness_targets"][0, p] == pytest.approx(16 / 144, rel=1e-5)
    # reversed order: the same box wins
    t2 = make_target()(outs, *gts(b, a))
    assert positives(t2) == [p] and t2["matched_gt"][0, p] == 1
    torch.testing.assert_close(t2["bbox_targets"], t["bbox_targets"])


def test_tiny_box_gets_the_nearest_finest_position():
    gb, gl = gts(([5, 5, 7, 7], 2))  # contains no position
    t = make_target()(outputs(), gb, gl)
    p = P8[(4, 4)]
    assert positives(t) == [p]
    assert t["labels"][0, p] == 2
    assert t["bbox_weights"][0, p] == 1.0  # the fallback position lies outside the box


def test_crowd_regions_are_ignored_but_keep_positives():
    gb, gl = gts(([2, 2, 14, 14], 0), ([16, 0, 32, 16], -1))
    t = make_target()(outputs(), gb, gl)
    ignored = sorted([P8[(20, 4)], P8[(28, 4)], P8[(20, 12)], P8[(28, 12)], 16 + 1])
    assert sorted(torch.nonzero(t["label_weights"][0] == 0).squeeze(1).tolist()) == ignored
    assert len(positives(t)) == 1 and t["labels"][0, positives(t)[0]] == 0
    assert (t["matched_gt"][0] != 1).all()  # the crowd box takes no positives

    # a crowd box over the whole image: the real box keeps its positive, all else ignored
    gb, gl = gts(([0, 0, 32, 32], -1), ([2, 2, 14, 14], 1))
    t = make_target()(outputs(), gb, gl)
    pos = positives(t)
    assert len(pos) == 1 and t["label_weights"][0, pos[0]] == 1
    assert t["matched_gt"][0, pos[0]] == 1
    assert (t["label_weights"][0].sum()) == 1


def test_empty_images():
    tgt = make_target()
    outs = outputs(batch=2)
    t = tgt(
        outs,
        [torch.zeros(0, 4), torch.tensor([[2.0, 2, 14, 14]])],
        [torch.zeros(0, dtype=torch.long), torch.tensor([0])],
    )
    assert not t["pos_mask"][0].any() and t["pos_mask"][1].sum() == 1
    assert (t["labels"][0] == C).all() and (t["label_weights"] == 1).all()
    t = tgt(outs, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert not t["pos_mask"].any() and (t["labels"] == C).all()
    # only ignore regions
    t = tgt(outputs(), [torch.tensor([[0.0, 0, 16, 16]])], [torch.tensor([-1])])
    assert not t["pos_mask"].any() and t["label_weights"][0].sum() == 20 - 5


def _random_case(batch, n, size, seed, num_classes=5, crowd_every=7):
    g = torch.Generator().manual_seed(seed)
    strides = [8, 16, 32]
    cls, box, ctr = [], [], []
    for s in strides:
        h = size // s
        cls.append(torch.randn(batch, num_classes, h, h, generator=g) - 2)
        box.append(torch.rand(batch, 4, h, h, generator=g) * 3)
        ctr.append(torch.randn(batch, 1, h, h, generator=g))
    boxes, labels = [], []
    for _ in range(batch):
        wh = torch.rand(n, 2, generator=g) * (size / 2 - 2) + 2
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        lab = torch.randint(0, num_classes, (n,), generator=g)
        lab[::crowd_every] = -1
        labels.append(lab)
    return strides, (*cls, *box, *ctr), boxes, labels


def test_invariant_to_ground_truth_order():
    strides, outs, boxes, labels = _random_case(2, 30, 128, seed=1)
    tgt = make_target(num_classes=5, strides=strides)
    t1 = tgt(outs, boxes, labels)
    perms = [torch.randperm(30, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t2 = tgt(outs, [b[p] for b, p in zip(boxes, perms)], [lab[p] for lab, p in zip(labels, perms)])
    assert t1["pos_mask"].sum() > 20
    for key in (
        "pos_mask",
        "labels",
        "label_weights",
        "bbox_targets",
        "bbox_weights",
        "centerness_targets",
    ):
        torch.testing.assert_close(t1[key], t2[key], rtol=0, atol=0, msg=key)
    for b, p in enumerate(perms):
        pos = t1["pos_mask"][b]
        assert torch.equal(p[t2["matched_gt"][b][pos]], t1["matched_gt"][b][pos])


def _bench_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_targets_postprocess.py"
    spec = importlib.util.spec_from_file_location("bench_targets_postprocess", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("n,radius,seed", [(5, None, 0), (120, None, 1), (40, 1.5, 2)])
def test_matches_per_gt_loop_reference(n, radius, seed):
    bench = _bench_module()
    strides, outs, boxes, labels = _random_case(2, n, 128, seed=seed)
    boxes[1] = boxes[1][: n // 2]  # ragged batch: padding must not matter
    labels[1] = labels[1][: n // 2]
    tgt = make_target(num_classes=5, strides=strides, radius=radius)
    got = tgt(outs, boxes, labels)
    ref = bench.reference_simota(outs, strides, boxes, labels, radius=radius)
    assert got["pos_mask"].sum() >= min(n, 20)
    assert bench.assignments_equal(got, ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match="background_label=3 must equal cls_out_channels=2"):
        DynamicFcosTarget([8], 2, 3, 10, FocalLoss(3, reduction="none"), GIoULoss(reduction="none"))
    with pytest.raises(ValueError, match="reduction 'none'"):
        DynamicFcosTarget([8], 2, 2, 10, FocalLoss(3), GIoULoss(reduction="none"))
    with pytest.raises(ValueError, match=r"loss_cls.num_classes=81"):
        DynamicFcosTarget(
            [8], 2, 2, 10, FocalLoss(81, reduction="none"), GIoULoss(reduction="none")
        )
    with pytest.raises(ValueError, match="strides"):
        DynamicFcosTarget(
            [16, 8], 2, 2, 10, FocalLoss(3, reduction="none"), GIoULoss(reduction="none")
        )


def _target(**kw):
    return DynamicFcosTarget(
        strides=STRIDES,
        cls_out_channels=C,
        background_label=C,
        topK=10,
        loss_cls=FocalLoss(num_classes=C + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"),
        **kw,
    )


def test_min_k_floors_the_dynamic_k():
    outs = outputs()  # degenerate predicted boxes: every IoU is 0, so SimOTA's k is 1
    gb, gl = gts(([2, 2, 14, 14], 1))
    assert len(positives(_target()(outs, gb, gl))) == 1
    # 5 candidates (4 at stride 8, 1 at stride 16); min_k=3 takes the 3 cheapest, min_k=9 all
    t3 = _target(min_k=3)(outs, gb, gl)
    assert len(positives(t3)) == 3
    assert len(positives(_target(min_k=9)(outs, gb, gl))) == 5
    cost_order = positives(_target(min_k=5)(outs, gb, gl))
    assert set(positives(t3)) <= set(cost_order)
    with pytest.raises(ValueError, match="min_k"):
        _target(min_k=0)


def test_geometric_centerness_target_is_fcos_centerness():
    outs = outputs()
    gt = [2.0, 2, 14, 14]
    set_box(outs, (12, 12), [2, 2, 14, 13])  # some IoU, so the IoU target would be nonzero
    gb, gl = gts((gt, 0))
    iou_t = _target(min_k=4)(outs, gb, gl)
    geo_t = _target(min_k=4, centerness_target="geometric")(outs, gb, gl)
    pos = geo_t["pos_mask"][0]
    assert torch.equal(pos, iou_t["pos_mask"][0])
    # sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)) of each positive point in the box
    pts = geo_t["points"][pos]
    left, r = pts[:, 0] - gt[0], gt[2] - pts[:, 0]
    top, bot = pts[:, 1] - gt[1], gt[3] - pts[:, 1]
    ref = torch.sqrt(
        torch.minimum(left, r)
        / torch.maximum(left, r)
        * torch.minimum(top, bot)
        / torch.maximum(top, bot)
    )
    torch.testing.assert_close(geo_t["centerness_targets"][0][pos], ref)
    assert not torch.equal(iou_t["centerness_targets"][0][pos], ref)
    with pytest.raises(ValueError, match="centerness_target"):
        _target(centerness_target="giou")
