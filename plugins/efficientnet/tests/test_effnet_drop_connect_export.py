"""Drop-connect is training-only and can be switched off; the graph exports without it."""

from __future__ import annotations

import pytest
import torch

from fcos_plugin_efficientnet.layers import DropConnect
from fcos_plugin_efficientnet.model import EfficientNet


def test_drop_connect_rates_grow_linearly_and_only_on_residual_blocks():
    model = EfficientNet("b0", drop_connect_rate=0.2)
    blocks = [b for s in model.stages for b in s]
    assert all(b.drop.p == 0.0 for b in blocks if not b.use_residual)
    # block i of n (counting all blocks) drops with rate * i / n
    assert [b.drop.p for b in blocks if b.use_residual] == [
        0.2 * i / len(blocks) for i, b in enumerate(blocks) if b.use_residual
    ]
    assert blocks[-2].drop.p == 0.2 * 14 / 16  # block 14 of 16 in b0


def test_drop_connect_is_identity_in_eval_and_random_in_training():
    torch.manual_seed(0)
    drop = DropConnect(0.5)
    x = torch.ones(64, 3, 2, 2)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    # every sample is either dropped (0) or kept and rescaled (2), never partially
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == 0).all(1).any() and (per_sample == 2).all(1).any()


@pytest.mark.slow
def test_set_drop_connect_rate_zero_makes_training_deterministic_and_exportable():
    model = EfficientNet("b0", drop_connect_rate=0.3).train()
    model.set_drop_connect_rate(0.0)
    assert all(b.drop.p == 0.0 for s in model.stages for b in s)
    exported = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("bernoulli" in op or "rand" in op for op in ops)
    # only ops an int8 accelerator runs (conv, BN, ReLU, add)
    assert {op.split(".")[1] for op in ops} <= {
        "conv2d",
        "batch_norm",
        "relu_",
        "relu",
        "add",
        "add_",
    }
