"""The checker: unsupported layers of float and quantized models are named with the reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcos_plugin_nash_e.backend import NashEBackend
from fcos_plugin_nash_e.lower import CompileError


class Block(nn.Module):
    def __init__(self, act: nn.Module | None = None, conv: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv or nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(self.conv.out_channels)
        self.act = act or nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Net(nn.Module):
    """stem -> block -> (pool, upsample, add, cat, channel max): all supported by default."""

    def __init__(self, block: Block | None = None, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.block = block or Block(conv=nn.Conv2d(width, 8, 3, padding=1))
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.head = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        y = self.block(self.stem(x))
        z = self.up(self.pool(self.dw(y))) + y
        out = self.head(torch.cat([y, z], dim=1))
        return out, out.max(dim=1, keepdim=True).values


def _check(model: nn.Module):
    return NashEBackend().check(model, {"img": [1, 3, 32, 32]})


def test_supported_float_model_has_no_issues():
    assert list(_check(Net())) == []


@pytest.mark.parametrize(
    "act, op", [(nn.GELU(), "gelu"), (nn.Sigmoid(), "sigmoid"), (nn.SiLU(), "silu")]
)
def test_unsupported_activation_is_named(act, op):
    issues = _check(Net(Block(act=act)))
    assert [(i.layer, i.op) for i in issues] == [("block.act", op)]
    assert "not in the NASH-E operator set" in issues[0].reason


def test_dilated_5x5_conv_is_rejected_with_layer_name():
    conv = nn.Conv2d(8, 8, 5, padding=4, dilation=2)
    issues = _check(Net(Block(conv=conv)))
    assert any(i.layer == "block.conv" and "dilation" in i.reason for i in issues)
    assert any(i.layer == "block.conv" and "padding" in i.reason for i in issues)


def test_too_many_channels_is_rejected():
    issues = _check(Net(block=Block(conv=nn.Conv2d(4096, 8, 1)), width=4096))
    assert any(i.layer == "stem" and "4096" in i.reason for i in issues)
    assert any(i.layer == "block.conv" and "limit of 2048" in i.reason for i in issues)


def test_layer_norm_and_standalone_bn_are_rejected():
    class N(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(1, 8)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(self.norm(y) + y)

    issues = _check(N())
    names = {(i.layer, i.op) for i in issues}
    assert any(layer == "norm" for layer, _ in names)
    assert any(layer == "bn" and "follow a conv" in i.reason for i in issues for layer in [i.layer])


def test_broadcast_add_and_scalar_mul_are_rejected():
    class N(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return (y + y.mean(dim=(2, 3), keepdim=True)) * 2.0

    ops = {i.op for i in _check(N())}
    assert {"mean", "add", "mul"} <= ops


def test_quantized_model_check_names_the_integer_op(nash):
    model = nash.make_op_zoo(seed=0)
    # make one conv dilated and one pool 4x4: both outside the target's limits
    ops = list(model.program)
    for k, op in enumerate(ops):
        if op.name == "grouped":
            ops[k] = type(op)(
                op.name, op.kind, op.inputs, op.dtype, {**op.attrs, "dilation": (2, 2)}
            )
        if op.name == "pool3":
            ops[k] = type(op)(
                op.name, op.kind, op.inputs, op.dtype, {**op.attrs, "kernel_size": (4, 4)}
            )
    model.program = tuple(ops)
    issues = NashEBackend().check(model, {"img": torch.zeros(1, 3, 62, 62)})
    assert {(i.layer, i.op) for i in issues} == {("grouped", "conv2d"), ("pool3", "max_pool2d")}
    with pytest.raises(CompileError, match="grouped"):
        NashEBackend().compile(
            model,
            {"img": torch.zeros(1, 3, 62, 62)},
            {"hbm": "/nonexistent/x.hbm", "out_dir": "/nonexistent"},
            None,
        )


def test_float_model_is_not_compiled():
    from fcos_core.errors import FcosUserError

    with pytest.raises(FcosUserError, match="not a quantized deploy model"):
        NashEBackend().compile(Net(), {"img": torch.zeros(1, 3, 32, 32)}, {}, None)


@pytest.mark.slow
def test_seed_fcos_deploy_model_passes_and_swish_fails():
    """The reference model (EfficientNet-B0 relu no-SE, BiFPN sum, FCOS head, compile filter)
    is inside the target's limits; the swish variant is not."""
    from fcos_core.plugins import load_host
    from fcos_core.testing import build_block as build

    host = load_host()
    if (
        "efficientnet" not in host.registries["backbones"].names()
        or "BiFPN" not in host.registries["necks"].names()
    ):
        pytest.skip("efficientnet/bifpn plugins are not installed")

    def model(act: str) -> nn.Module:
        text = f"""
type: FCOS
backbone: {{type: efficientnet, model_type: b0, include_top: false, activation: {act},
           use_se_block: false, num_classes: 1000}}
neck: {{type: BiFPN, in_strides: [2, 4, 8, 16, 32], out_strides: [8, 16, 32, 64, 128],
       stride2channels: {{2: 16, 4: 24, 8: 40, 16: 112, 32: 320}}, out_channels: 64,
       num_outs: 5, stack: 3, start_level: 2, end_level: -1, fpn_name: bifpn_sum}}
head: {{type: FCOSHead, num_classes: 80, in_strides: [8, 16, 32, 64, 128],
       out_strides: [8, 16, 32, 64, 128],
       stride2channels: {{8: 64, 16: 64, 32: 64, 64: 64, 128: 64}}, feat_channels: 64,
       stacked_convs: 4, int8_output: false, int16_output: true, dequant_output: false}}
post_process: {{type: FCOSMultiStrideFilter, strides: [8, 16, 32, 64, 128],
               threshold: -2.944, for_compile: true, max_shape: [128, 128]}}
"""
        return build(host, "models", text)

    backend = NashEBackend()
    assert list(backend.check(model("relu"), {"img": [1, 3, 128, 128]})) == []
    issues = backend.check(model("swish"), {"img": [1, 3, 128, 128]})
    assert issues and all(i.op == "silu" for i in issues)
    assert all(i.layer.startswith("body.backbone") for i in issues)
