"""Torchvision's weights, mapped by the documented key map, give the same outputs (1e-5)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fcos_plugin_efficientnet.model import EfficientNet
from fcos_plugin_efficientnet.weights import load_state_dict_report, torchvision_key_map


def randomised_torchvision(model_type: str) -> torch.nn.Module:
    """torchvision's own random init, plus random BN statistics so that BN is not identity."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"efficientnet_{model_type}")()
    gen = torch.Generator().manual_seed(1)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return tv.eval()


# b5 also checks the documented BN settings of torchvision's b5-b7
@pytest.mark.parametrize(
    "model_type, bn_kwargs", [("b0", {}), ("b2", {}), ("b5", {"eps": 1e-3, "momentum": 0.01})]
)
def test_mapped_torchvision_weights_give_the_same_logits_and_features(model_type, bn_kwargs):
    tv = randomised_torchvision(model_type)
    ours = EfficientNet(
        model_type, include_top=True, activation="swish", use_se_block=True, bn_kwargs=bn_kwargs
    )
    report = load_state_dict_report(ours, tv.state_dict())
    assert report.source_format == "torchvision"
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert len(report.matched) == len(tv.state_dict())
    ours.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tv(x)
        assert torch.allclose(ours(x), expected, atol=1e-5, rtol=0)
        assert expected.abs().max() > 1e-2  # the comparison is not between two zeros
        # the features: torchvision's stages 1, 2, 3, 5, 7 end at strides 2 .. 32
        tv_feats, y = [], x
        for i, stage in enumerate(tv.features[:8]):
            y = stage(y)
            if i in (1, 2, 3, 5, 7):
                tv_feats.append(y)
        for a, b in zip(ours.forward_features(x), tv_feats):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_key_map_covers_every_torchvision_module_exactly_once():
    with torch.device("meta"):
        tv = torchvision.models.efficientnet_b3()
        ours = EfficientNet("b3", include_top=True, activation="swish", use_se_block=True)
    mapping = torchvision_key_map(ours)
    tv_prefixes = {k.rpartition(".")[0] for k in tv.state_dict()}
    our_prefixes = {k.rpartition(".")[0] for k in ours.state_dict()}
    assert set(mapping) == tv_prefixes
    assert sorted(mapping.values()) == sorted(our_prefixes)
