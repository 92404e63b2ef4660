"""BiFPN shapes, topology, fusion rules and initialisation for the seed configuration."""

from __future__ import annotations

import warnings

import pytest
import torch

from fcos_plugin_bifpn.layers import FastAttentionFusion, FusionNode, SumFusion
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


def backbone_features(size: int = 256, batch: int = 2, cfg: dict = SEED) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, cfg["stride2channels"][s], size // s, size // s, generator=gen)
        for s in cfg["in_strides"]
    ]


def scales(resample) -> int:
    return 1 if hasattr(resample, "up") else -1 if hasattr(resample, "down") else 0


@pytest.mark.parametrize("fpn_name", ["bifpn_sum", "bifpn_fa"])
def test_seed_output_shapes(fpn_name):
    neck = BiFPN(**{**SEED, "fpn_name": fpn_name})
    assert neck.out_strides == [8, 16, 32, 64, 128]
    assert neck.out_channels == [64] * 5
    outs = neck(backbone_features())
    assert [tuple(o.shape) for o in outs] == [(2, 64, 256 // s, 256 // s) for s in neck.out_strides]
    assert all(torch.isfinite(o).all() for o in outs)


def test_levels_without_extras_and_other_selection():
    cfg = dict(
        in_strides=[4, 8, 16, 32],
        out_strides=[4, 8, 16, 32],
        stride2channels={4: 8, 8: 16, 16: 32, 32: 64},
        out_channels=24,
        num_outs=4,
        stack=1,
        start_level=0,
        end_level=3,
    )
    neck = BiFPN(**cfg)
    assert len(neck.extra) == 0
    outs = neck(backbone_features(64, 1, cfg))
    assert [tuple(o.shape) for o in outs] == [
        (1, 24, 16, 16),
        (1, 24, 8, 8),
        (1, 24, 4, 4),
        (1, 24, 2, 2),
    ]
    # end_level in the middle: the coarser backbone features are ignored, extras pool
    neck = BiFPN(**{**cfg, "end_level": 1, "out_strides": [4, 8, 16], "num_outs": 3})
    assert len(neck.extra) == 1
    assert [tuple(o.shape) for o in neck(backbone_features(64, 1, cfg))] == [
        (1, 24, 16, 16),
        (1, 24, 8, 8),
        (1, 24, 4, 4),
    ]


def test_topology_is_efficientdets():
    """Eight nodes per layer with EfficientDet's inputs (effdet's own P3-P7 node table)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # effdet's import warns about torch.jit
        from effdet.config import get_fpn_config

    table = get_fpn_config("bifpn_fa", min_level=3, max_level=7).nodes
    levels = [n["feat_level"] for n in table]
    neck = BiFPN(**SEED)
    for layer in neck.layers:
        nodes = list(layer.top_down) + list(layer.bottom_up)
        assert len(nodes) == len(table) == 8
        for node, spec, level in zip(nodes, table, levels):
            expected = []
            for off in spec["inputs_offsets"]:
                src = 3 + off if off < 5 else levels[off - 5]
                expected.append(src - level)  # +1: from the coarser level (upsample)
            assert [scales(r) for r in node.inputs] == expected


def test_channel_projection_only_where_channels_differ():
    neck = BiFPN(**SEED)
    # P6 from the 320-channel P5: 1x1 conv + BN then pool; P7 pools P6 only
    assert hasattr(neck.extra[0], "proj") and hasattr(neck.extra[0], "down")
    assert not hasattr(neck.extra[1], "proj")
    projs = [
        [hasattr(r, "proj") for n in list(layer.top_down) + list(layer.bottom_up) for r in n.inputs]
        for layer in neck.layers
    ]
    # layer 1: P5 (320) feeds td5 and out5, P4 (112) td4 and out4, P3 (40) out3: 5 convs
    assert sum(projs[0]) == 5
    assert not any(projs[1]) and not any(projs[2])


def test_sum_fusion_node_computes_relu_sepconv_of_the_plain_sum():
    node = FusionNode([8, 8, 8], [0, 1, -1], 8, "bifpn_sum", "relu").eval()
    assert isinstance(node.fuse, SumFusion)
    a, b, c = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 16, 16)
    merged = (
        a
        + torch.nn.functional.interpolate(b, scale_factor=2, mode="nearest")
        + torch.nn.functional.max_pool2d(c, 2, 2)
    )
    conv = node.conv
    expected = conv.bn(conv.pw(conv.dw(torch.relu(merged))))
    assert torch.allclose(node([a, b, c]), expected, atol=1e-6)


def test_fast_attention_weights_are_non_negative_and_normalised():
    fuse = FastAttentionFusion(3)
    assert torch.equal(fuse.weight.detach(), torch.ones(3))  # equal weighting at init
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([-2.0, 1.0, 3.0]))
    w = fuse.normalized_weights()
    assert (w >= 0).all()
    assert torch.allclose(w, torch.tensor([0.0, 1.0, 3.0]) / (4.0 + 1e-4))
    xs = [torch.randn(1, 2, 3, 3) for _ in range(3)]
    assert torch.allclose(fuse(xs), w[1] * xs[1] + w[2] * xs[2])
    # stays non-negative after training pushes every raw weight below zero
    with torch.no_grad():
        fuse.weight.fill_(-1.0)
    assert (fuse.normalized_weights() >= 0).all()


def test_fast_attention_weights_learn():
    neck = BiFPN(**{**SEED, "fpn_name": "bifpn_fa", "stack": 1})
    outs = neck(backbone_features(256, 1))
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for n, p in neck.named_parameters() if n.endswith("fuse.weight")]
    assert len(grads) == 8 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_documented_initialisation():
    torch.manual_seed(0)
    neck = BiFPN(**{**SEED, "fpn_name": "bifpn_fa"})
    weights = torch.cat(
        [m.weight.flatten() for m in neck.modules() if isinstance(m, torch.nn.Conv2d)]
    )
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.01) < 5e-4
    bns = [m for m in neck.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert all(m.bias is None for m in neck.modules() if isinstance(m, torch.nn.Conv2d))
