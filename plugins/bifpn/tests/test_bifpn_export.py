"""The neck is built from accelerator ops only, exports with torch.export, and every BN
follows a conv (so conv-BN(-ReLU) groups fuse)."""

from __future__ import annotations

import pytest
import torch

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

ACCELERATOR_OPS = {
    "conv2d",
    "batch_norm",
    "relu",
    "relu_",
    "add",
    "max_pool2d",
    "upsample_nearest2d",
}


@pytest.mark.slow
def test_seed_neck_exports_to_accelerator_ops_with_fusable_conv_bn():
    neck = BiFPN(**SEED).eval()
    feats = [torch.randn(1, c, 256 // s, 256 // s) for s, c in SEED["stride2channels"].items()]
    program = torch.export.export(neck, (feats,))
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    ops = {str(n.target).split(".")[1] for n in calls}
    assert ops <= ACCELERATOR_OPS, ops - ACCELERATOR_OPS
    bns = [n for n in calls if "batch_norm" in str(n.target)]
    assert bns and all("conv2d" in str(n.args[0].target) for n in bns)
    ups = [n for n in calls if "upsample" in str(n.target)]
    assert len(ups) == 4 * 3  # one x2 resize per top-down node
    with torch.no_grad():
        for a, b in zip(program.module()(feats), neck(feats)):
            assert torch.allclose(a, b, atol=1e-6)


def test_training_graph_exports_for_qat():
    # PT2E QAT exports the model in training mode; the fusion weights of bifpn_fa are
    # parameters like any other, and nothing random or data-dependent is traced
    neck = BiFPN(**{**SEED, "fpn_name": "bifpn_fa", "stack": 1}).train()
    feats = [torch.randn(2, c, 128 // s, 128 // s) for s, c in SEED["stride2channels"].items()]
    program = torch.export.export(neck, (feats,))
    ops = {str(n.target).split(".")[1] for n in program.graph.nodes if n.op == "call_function"}
    assert not any("rand" in op or "bernoulli" in op for op in ops)
    assert {"conv2d", "max_pool2d", "upsample_nearest2d"} <= ops
