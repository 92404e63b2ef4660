"""Optimizers from config: per-parameter-group options and SGD with Nesterov."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcos_core.engine.optimizers import SGD, AdamW, param_groups


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_weight_key_selects_dotted_suffixes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = SGD(net, lr=0.1, momentum=0.9, nesterov=True, params={"weight": {"weight_decay": 4e-5}})
    by_group = {g["group"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in by_group["weight"]["params"]) == ["0.weight", "1.weight"]
    assert sorted(names[id(p)] for p in by_group["default"]["params"]) == ["0.bias", "1.bias"]
    assert by_group["weight"]["weight_decay"] == 4e-5 and by_group["default"]["weight_decay"] == 0
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_first_matching_key_wins_and_frozen_params_are_left_out():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net[1].bias.requires_grad_(False)
    groups = param_groups(net, {"1.weight": {"lr": 1.0}, "weight": {"lr": 2.0}}, {"lr"})
    sizes = {g["group"]: len(g["params"]) for g in groups}
    assert sizes == {"1.weight": 1, "weight": 1, "default": 1}


def test_config_mistakes_are_reported():
    net = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"select no parameter.*names look like: weight, bias"):
        SGD(net, lr=0.1, params={"weights": {"weight_decay": 1e-4}})
    with pytest.raises(ValueError, match=r"unknown option.*weight_decy"):
        SGD(net, lr=0.1, params={"weight": {"weight_decy": 1e-4}})
    with pytest.raises(ValueError, match="nesterov"):
        SGD(net, lr=0.1, nesterov=True)


def test_nesterov_steps_match_torch_sgd():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = SGD(a, lr=0.1, momentum=0.9, nesterov=True, params={"weight": {"weight_decay": 0.01}})
    ref = torch.optim.SGD(
        [{"params": [b.weight], "weight_decay": 0.01}, {"params": [b.bias]}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    x = torch.randn(5, 4)
    for _ in range(3):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)


def test_adamw_from_config(host):
    from fcos_core.build import build
    from fcos_core.config.loader import LineMap
    from fcos_core.config.validate import Validator

    v = Validator(host.registries, LineMap(None))
    node = v.check_component(
        "optimizers", {"type": "AdamW", "lr": 0.01, "params": {"bias": {"weight_decay": 0.0}}}, ()
    )
    assert not v.problems
    opt = build(node, model=nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.01]
    assert AdamW(nn.Linear(2, 2)).defaults["lr"] == 1e-3
