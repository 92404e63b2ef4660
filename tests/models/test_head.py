"""FCOSHead: shapes, sharing, initialisation, upscaling, flags and construction errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fcos_core.models.head import FCOSHead

STRIDES = [8, 16, 32]


def make_head(**kw):
    args = dict(
        num_classes=7,
        in_strides=STRIDES,
        out_strides=STRIDES,
        stride2channels=dict.fromkeys(STRIDES, 16),
        feat_channels=24,
        stacked_convs=2,
    )
    args.update(kw)
    return FCOSHead(**args)


def feats(batch=2, size=64, channels=16, strides=STRIDES):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, size // s, size // s, generator=g) for s in strides]


def test_output_structure_and_non_negative_boxes():
    head = make_head().train()
    out = head(feats())
    assert len(out) == 9
    for i, s in enumerate(STRIDES):
        h = 64 // s
        assert out[i].shape == (2, 7, h, h)
        assert out[3 + i].shape == (2, 4, h, h)
        assert out[6 + i].shape == (2, 1, h, h)
        assert (out[3 + i] >= 0).all()


def test_prior_probability_bias_and_shared_weights():
    head = make_head()
    torch.testing.assert_close(torch.sigmoid(head.conv_cls.bias), torch.full((7,), 0.01))
    assert head.conv_cls.bias[0].item() == pytest.approx(-math.log(99))
    # one depthwise + one pointwise conv per tower layer for all strides, BNs per stride
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 2 * 2 + 3
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * 2 * 2 * len(STRIDES)
    dw = head.cls_convs[0].dw
    assert dw.groups == 16 and dw.kernel_size == (3, 3)
    assert head.conv_cls.kernel_size == (3, 3) and head.conv_centerness.kernel_size == (3, 3)
    # the same weights serve every stride: a feature moved to another level, with that level's
    # BN set like this one's, gives the same output
    head.eval()
    f = feats()
    for tower in (head.cls_convs, head.reg_convs):
        for layer in tower:
            for bns_ in (layer.dw_bn, layer.pw_bn):
                bns_[1].load_state_dict(bns_[0].state_dict())
    out = head([f[0], f[0], f[2]])
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[3], out[4])
    torch.testing.assert_close(out[6], out[7])


def test_per_stride_batchnorm_statistics():
    head = make_head().train()
    head(feats())
    means = [bn.running_mean.clone() for bn in head.cls_convs[0].dw_bn]
    assert not torch.allclose(means[0], means[1])  # each level tracks its own statistics


def test_upscale_bbox_pred_multiplies_by_stride_in_eval_only():
    base = make_head().eval()
    up = make_head(upscale_bbox_pred=True).eval()
    up.load_state_dict(base.state_dict())
    f = feats()
    a, b = base(f), up(f)
    for i, s in enumerate(STRIDES):
        torch.testing.assert_close(b[3 + i], a[3 + i] * s)
        torch.testing.assert_close(b[i], a[i])
    up.train()
    base.train()
    torch.testing.assert_close(up(f)[3], base(f)[3])


def test_out_strides_subset_and_quantization_flags():
    head = make_head(
        in_strides=[4, 8, 16, 32],
        out_strides=[8, 32],
        stride2channels={4: 8, 8: 16, 16: 16, 32: 16},
        int8_output=False,
        int16_output=True,
        dequant_output=False,
    )
    out = head([torch.zeros(1, 8, 16, 16), *feats(batch=1)])
    assert [o.shape[-1] for o in out] == [8, 2, 8, 2, 8, 2]
    assert head.output_dtype == "int16" and head.int16_output and not head.dequant_output
    assert make_head(int8_output=False).output_dtype == "int32"
    assert make_head().output_dtype == "int8"
    assert head.output_module_names == ("conv_cls", "conv_reg", "conv_centerness")


def test_exportable():
    head = make_head().eval()
    ep = torch.export.export(head, (feats(batch=1),))
    f = feats(batch=1)
    for a, b in zip(ep.module()(f), head(f)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(out_strides=[8, 64]), r"out_strides \[8, 64\] has strides \[64\]"),
        (dict(stride2channels={8: 16, 16: 16}), "no entry for strides"),
        (dict(stride2channels={8: 16, 16: 32, 32: 16}), "different channels"),
        (dict(int8_output=True, int16_output=True), "int8_output and int16_output"),
        (dict(num_classes=0), "num_classes"),
        (dict(out_strides=[16, 8]), "increasing"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_head(**kw)


def test_training_forward_uses_the_cpu_kernels_and_matches_the_stock_modules(monkeypatch):
    """In eager channels-last CPU training every tower BatchNorm (+ReLU) goes through the
    fused kernel (fcos_core.models.fast_batchnorm); outputs and gradients match the stock
    modules to float32 rounding."""
    from fcos_core.models import cpu_kernels, fast_batchnorm, fast_conv

    assert cpu_kernels.available(), cpu_kernels.error()
    torch.manual_seed(0)
    fused, stock = make_head().train(), make_head().train()
    stock.load_state_dict(fused.state_dict())
    cl = torch.channels_last
    fused.to(memory_format=cl)
    stock.to(memory_format=cl)
    calls = []
    real = fast_batchnorm._BatchNormAct.apply
    monkeypatch.setattr(
        fast_batchnorm._BatchNormAct, "apply", lambda *a: calls.append(a[-1]) or real(*a)
    )

    def step(head, enabled):
        xs = [f.to(memory_format=cl).requires_grad_() for f in feats()]
        with monkeypatch.context() as m:
            m.setattr(fast_batchnorm, "ENABLED", enabled)
            m.setattr(fast_conv, "ENABLED", enabled)
            outs = [o for group in head(xs) for o in group]
        weights = torch.Generator().manual_seed(1)
        sum((o * torch.randn(o.shape, generator=weights)).sum() for o in outs).backward()
        return [o.detach() for o in outs], [x.grad for x in xs]

    outs_f, grads_f = step(fused, True)
    # 2 towers x 2 stacked convs x (dw BN, pw BN + ReLU), at each of 3 strides
    assert sorted(calls) == [False] * 12 + [True] * 12
    outs_s, grads_s = step(stock, False)
    for a, b in zip(outs_f + grads_f, outs_s + grads_s):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-6
    for (name, p), q in zip(fused.named_parameters(), stock.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-3 * q.grad.abs().max() + 1e-6, name


def test_kaiming_conv_init_for_the_towers_only():
    head = make_head(conv_init="kaiming", feat_channels=64, stacked_convs=2)
    pw = head.cls_convs[1].pw.weight  # 64 -> 64 1x1: He normal, fan-out, std sqrt(2 / 64)
    assert pw.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    dw = head.reg_convs[0].dw.weight  # depthwise 3x3 over 16 channels: torch's fan-out 16 * 9
    assert dw.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.25)
    for conv in (head.conv_cls, head.conv_reg, head.conv_centerness):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.25)
    assert make_head().cls_convs[1].pw.weight.std().item() == pytest.approx(0.01, rel=0.25)
    with pytest.raises(ValueError, match="conv_init"):
        make_head(conv_init="xavier")
