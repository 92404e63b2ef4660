"""Argument errors at construction, and the check against a backbone's strides/channels."""

from __future__ import annotations

import pytest

from fcos_plugin_bifpn.model import BiFPN

SEED = dict(
    in_strides=[2, 4, 8, 16, 32],
    out_strides=[8, 16, 32, 64, 128],
    stride2channels={2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
    out_channels=64,
    num_outs=5,
    stack=3,
    start_level=2,
    end_level=-1,
    fpn_name="bifpn_sum",
)


@pytest.mark.parametrize(
    "change, name",
    [
        ({"stride2channels": {2: 16, 4: 24, 8: 40, 16: 112}}, "stride2channels"),
        ({"in_strides": [2, 8, 4, 16, 32]}, "in_strides"),
        ({"out_strides": [8, 16, 32, 64, 256]}, "out_strides"),
        ({"num_outs": 4}, "out_strides"),
        ({"num_outs": 1, "out_strides": [8]}, "num_outs"),
        ({"start_level": 5}, "start_level"),
        ({"end_level": 1}, "end_level"),
        ({"stack": 0}, "stack"),
        ({"out_channels": 0}, "out_channels"),
        ({"fpn_name": "fpn"}, "fpn_name"),
        ({"activation": "gelu"}, "activation"),
        ({"bn_kwargs": {"epsilon": 1.0}}, "bn_kwargs"),
        (
            {"in_strides": [2, 4, 8, 24, 32], "stride2channels": {2: 1, 4: 1, 8: 1, 24: 1, 32: 1}},
            "double",
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, name):
    with pytest.raises(ValueError, match=name):
        BiFPN(**{**SEED, **change})


def test_check_inputs_accepts_the_seed_backbone():
    BiFPN(**SEED).check_inputs([2, 4, 8, 16, 32], [16, 24, 40, 112, 320])


def test_check_inputs_names_the_wrong_argument():
    neck = BiFPN(**SEED)
    with pytest.raises(
        ValueError,
        match=r"stride2channels.*stride 8: 40 configured, "
        "backbone gives 48",
    ):
        neck.check_inputs([2, 4, 8, 16, 32], [16, 24, 48, 120, 352])  # a b2 backbone
    with pytest.raises(ValueError, match="in_strides"):
        neck.check_inputs([4, 8, 16, 32], [24, 40, 112, 320])


def test_kaiming_conv_init():
    import math

    import torch.nn as nn

    normal, kaiming = BiFPN(**SEED), BiFPN(**{**SEED, "conv_init": "kaiming"})
    for a, b in zip(normal.modules(), kaiming.modules()):
        if isinstance(a, nn.Conv2d) and a.weight.numel() >= 4096:
            fan_out = b.out_channels * b.kernel_size[0] * b.kernel_size[1]  # torch's rule
            assert a.weight.std().item() == pytest.approx(0.01, rel=0.1)
            assert b.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    with pytest.raises(ValueError, match="conv_init"):
        BiFPN(**{**SEED, "conv_init": "xavier"})
