"""Parameter counts and feature shapes of every variant against torchvision's EfficientNets."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops.misc import SqueezeExcitation

from fcos_plugin_efficientnet.model import EfficientNet
from fcos_plugin_efficientnet.variants import VARIANTS, feature_channels

ALL = sorted(VARIANTS)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_model(model_type: str) -> torch.nn.Module:
    # meta tensors: shapes without memory or initialisation, so even b7 builds in a blink
    with torch.device("meta"):
        return getattr(torchvision.models, f"efficientnet_{model_type}")()


@pytest.mark.parametrize("model_type", ALL)
def test_swish_se_top_has_torchvision_parameter_count(model_type):
    tv = torchvision_model(model_type)
    with torch.device("meta"):
        ours = EfficientNet(model_type, include_top=True, activation="swish", use_se_block=True)
    assert n_params(ours) == n_params(tv)


@pytest.mark.parametrize("model_type", ALL)
def test_relu_without_se_is_torchvision_minus_its_se_blocks(model_type):
    tv = torchvision_model(model_type)
    se = sum(n_params(m) for m in tv.modules() if isinstance(m, SqueezeExcitation))
    with torch.device("meta"):
        ours = EfficientNet(model_type, include_top=True, activation="relu", use_se_block=False)
    assert n_params(ours) == n_params(tv) - se


def test_published_b0_counts():
    with torch.device("meta"):
        paper = EfficientNet("b0", include_top=True, activation="swish", use_se_block=True)
        seed = EfficientNet("b0", include_top=True, activation="relu", use_se_block=False)
    assert n_params(paper) == 5_288_548
    assert n_params(seed) == 4_652_008


@pytest.mark.parametrize("model_type", ALL)
def test_feature_channels_match_torchvision_stage_outputs(model_type):
    tv = torchvision_model(model_type)
    # torchvision's features[1..7] are the seven stages; strides 2,4,8,16,32 end at 1,2,3,5,7
    tv_channels = [tv.features[i][-1].out_channels for i in (1, 2, 3, 5, 7)]
    with torch.device("meta"):
        ours = EfficientNet(model_type)
    assert ours.out_channels == tv_channels == feature_channels(model_type)
    assert ours.out_strides == [2, 4, 8, 16, 32]


def test_b0_feature_shapes_at_seed_size_and_odd_size():
    model = EfficientNet("b0").eval()
    assert model.out_channels == [16, 24, 40, 112, 320]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 96))
        assert [tuple(f.shape) for f in feats] == [
            (1, c, 128 // s, 96 // s) for c, s in zip(model.out_channels, model.out_strides)
        ]
        odd = model(torch.randn(1, 3, 65, 33))  # stride-2 convs round up, like 'same' padding
    assert [tuple(f.shape[2:]) for f in odd] == [(33, 17), (17, 9), (9, 5), (5, 3), (3, 2)]


@pytest.mark.parametrize(
    "activation, cls",
    [("relu", torch.nn.ReLU), ("swish", torch.nn.SiLU), ("hswish", torch.nn.Hardswish)],
)
def test_activation_choice_is_used_everywhere(activation, cls):
    with torch.device("meta"):
        model = EfficientNet("b0", activation=activation, use_se_block=True)
    acts = [
        m
        for m in model.modules()
        if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU, torch.nn.Hardswish))
    ]
    assert acts and all(isinstance(m, cls) for m in acts)


def test_top_returns_logits():
    model = EfficientNet("b0", include_top=True, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_bn_kwargs_reach_every_batchnorm():
    with torch.device("meta"):
        model = EfficientNet("b1", bn_kwargs={"eps": 1e-3, "momentum": 0.01})
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"model_type": "b8"}, "model_type"),
        ({"activation": "gelu"}, "activation"),
        ({"drop_connect_rate": 1.0}, "drop_connect_rate"),
        ({"include_top": True, "num_classes": 0}, "num_classes"),
        ({"bn_kwargs": {"epsilon": 1e-3}}, "bn_kwargs"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EfficientNet(**kwargs)
