"""Configured like EfficientDet-D0, the neck has effdet's D0 BiFPN parameter count."""

from __future__ import annotations

import warnings

import torch

from fcos_plugin_bifpn.model import BiFPN

D0_LIKE = dict(
    in_strides=[2, 4, 8, 16, 32],
    out_strides=[8, 16, 32, 64, 128],
    stride2channels={2: 16, 4: 24, 8: 40, 16: 112, 32: 320},
    out_channels=64,
    num_outs=5,
    stack=3,
    start_level=2,
    end_level=-1,
    fpn_name="bifpn_fa",
    activation="swish",
    bn_kwargs={"eps": 1e-3, "momentum": 0.01},
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_within_5_percent_of_effdet_d0():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet import create_model

        # random init only: nothing is downloaded
        d0 = create_model("efficientdet_d0", pretrained=False, pretrained_backbone=False)
    reference = n_params(d0.fpn)  # the BiFPN cells plus the P6/P7 resampling
    assert reference == 194_361
    ours = n_params(BiFPN(**D0_LIKE))
    assert abs(ours - reference) <= 0.05 * reference
    # fast attention adds one weight per node input: 19 per layer, the only difference
    # from the quantization-friendly sum form
    assert ours - n_params(BiFPN(**{**D0_LIKE, "fpn_name": "bifpn_sum"})) == 3 * 19
