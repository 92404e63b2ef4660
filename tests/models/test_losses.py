"""FocalLoss, GIoULoss and CrossEntropyLoss against torchvision / torch references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss, iou_and_giou

TOL = dict(rtol=1e-6, atol=1e-6)


def _grads(fn, *inputs):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    out.sum().backward()
    return out.detach(), [x.grad for x in xs]


def _focal_inputs(kind: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (64, 7)
    if kind == "random":
        return torch.randn(shape, generator=g) * 3, (torch.rand(shape, generator=g) > 0.8).float()
    if kind == "no_positives":
        return torch.randn(shape, generator=g), torch.zeros(shape)
    if kind == "extreme":
        x = torch.randn(shape, generator=g).sign() * 80.0
        return x, (torch.rand(shape, generator=g) > 0.5).float()
    if kind == "soft":
        return torch.randn(shape, generator=g), torch.rand(shape, generator=g)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "no_positives", "extreme", "soft"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 0.0), (0.6, 1.5)])
def test_focal_matches_torchvision(kind, reduction, alpha, gamma):
    g = torch.Generator().manual_seed(hash((kind, reduction, alpha)) % 2**31)
    x, t = _focal_inputs(kind, g)
    ours = FocalLoss(num_classes=8, alpha=alpha, gamma=gamma, reduction=reduction)
    v1, (g1,) = _grads(lambda a: ours(a, t), x)
    v2, (g2,) = _grads(lambda a: sigmoid_focal_loss(a, t, alpha, gamma, reduction), x)
    torch.testing.assert_close(v1, v2, **TOL)
    torch.testing.assert_close(g1, g2, **TOL)
    assert torch.isfinite(g1).all()


def test_focal_labels_with_background_weight_and_avg_factor():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 80, generator=g)
    labels = torch.randint(0, 81, (50,), generator=g)  # 80 = background
    weight = torch.rand(50, generator=g)
    onehot = F.one_hot(labels, 81)[:, :80].float()
    assert onehot[labels == 80].sum() == 0
    loss = FocalLoss(num_classes=81, loss_weight=2.0)
    got, (gx,) = _grads(lambda a: loss(a, labels, weight=weight, avg_factor=7.0), x)
    ref, (rx,) = _grads(
        lambda a: 2.0 * (sigmoid_focal_loss(a, onehot) * weight[:, None]).sum() / 7.0, x
    )
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(gx, rx, **TOL)


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("case", ["random", "zero_area", "identical", "disjoint", "touching"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_giou_matches_torchvision(case, reduction):
    g = torch.Generator().manual_seed(len(case))
    a, b = _random_boxes(40, g), _random_boxes(40, g)
    if case == "zero_area":
        a[::2, 2] = a[::2, 0]  # zero width
        b[1::3, 3] = b[1::3, 1]  # zero height
        b[5] = a[5] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # both degenerate points
    elif case == "identical":
        b = a.clone()
    elif case == "disjoint":
        b = a + 200.0
    elif case == "touching":
        b = a.clone()
        b[:, 0] = a[:, 2]
        b[:, 2] = a[:, 2] + 10
    loss = GIoULoss(reduction=reduction)
    v1, (ga1, gb1) = _grads(lambda p, q: loss(p, q), a, b)
    v2, (ga2, gb2) = _grads(lambda p, q: generalized_box_iou_loss(p, q, reduction), a, b)
    torch.testing.assert_close(v1, v2, **TOL)
    torch.testing.assert_close(ga1, ga2, **TOL)
    torch.testing.assert_close(gb1, gb2, **TOL)


def test_giou_weight_avg_factor_and_broadcast():
    g = torch.Generator().manual_seed(3)
    a, b = _random_boxes(12, g), _random_boxes(5, g)
    w = torch.rand(12, generator=g)
    got = GIoULoss(loss_weight=2.0)(a, b[0].expand(12, 4), weight=w, avg_factor=w.sum())
    ref = 2.0 * (generalized_box_iou_loss(a, b[0].expand(12, 4)) * w).sum() / w.sum()
    torch.testing.assert_close(got, ref, **TOL)
    # pairwise by broadcasting equals the element-by-element loss
    pair = GIoULoss(reduction="none")(a[:, None], b[None, :])
    assert pair.shape == (12, 5)
    ref_pair = generalized_box_iou_loss(a.repeat_interleave(5, 0), b.repeat(12, 1)).view(12, 5)
    torch.testing.assert_close(pair, ref_pair, **TOL)
    iou, _ = iou_and_giou(a[:, None], b[None, :])
    from torchvision.ops import box_iou

    torch.testing.assert_close(iou, box_iou(a, b), rtol=1e-5, atol=1e-6)


def test_giou_empty_mean_is_zero_with_graph():
    x = torch.zeros(0, 4, requires_grad=True)
    out = GIoULoss()(x, torch.zeros(0, 4))
    assert out.item() == 0.0 and out.requires_grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_sigmoid_and_softmax(reduction):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, generator=g) * 20  # includes extreme logits
    t = torch.rand(30, generator=g)
    ours = CrossEntropyLoss(use_sigmoid=True, reduction=reduction)
    v1, (g1,) = _grads(lambda a: ours(a, t), x)
    v2, (g2,) = _grads(lambda a: F.binary_cross_entropy_with_logits(a, t, reduction=reduction), x)
    torch.testing.assert_close(v1, v2, **TOL)
    torch.testing.assert_close(g1, g2, **TOL)

    logits = torch.randn(30, 6, generator=g)
    labels = torch.randint(0, 6, (30,), generator=g)
    soft = CrossEntropyLoss(use_sigmoid=False, reduction=reduction)
    v1, (g1,) = _grads(lambda a: soft(a, labels), logits)
    v2, (g2,) = _grads(lambda a: F.cross_entropy(a, labels, reduction=reduction), logits)
    torch.testing.assert_close(v1, v2, **TOL)
    torch.testing.assert_close(g1, g2, **TOL)


def test_cross_entropy_weight_avg_factor():
    g = torch.Generator().manual_seed(6)
    x, t, w = torch.randn(10, generator=g), torch.rand(10, generator=g), torch.rand(10, generator=g)
    got = CrossEntropyLoss(use_sigmoid=True, loss_weight=0.5)(x, t, weight=w, avg_factor=4.0)
    ref = 0.5 * (F.binary_cross_entropy_with_logits(x, t, reduction="none") * w).sum() / 4.0
    torch.testing.assert_close(got, ref, **TOL)


def test_bad_arguments_raise_at_construction():
    with pytest.raises(ValueError, match="num_classes"):
        FocalLoss(num_classes=1)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(num_classes=3, alpha=1.5)
    with pytest.raises(ValueError, match="reduction"):
        GIoULoss(reduction="avg")
    with pytest.raises(ValueError, match="loss_weight"):
        CrossEntropyLoss(loss_weight=-1.0)
    with pytest.raises(ValueError, match="class channels"):
        FocalLoss(num_classes=81)(torch.zeros(2, 81), torch.tensor([0, 80]))
    with pytest.raises(ValueError, match="avg_factor"):
        GIoULoss(reduction="sum")(torch.zeros(1, 4), torch.zeros(1, 4), avg_factor=2.0)
