"""The faster weight gradients of eager CPU training (fcos_core.models.fast_conv).

With the fused BatchNorm kernel switched off (it has its own tests in
tests/models/test_cpu_kernels.py), outputs, running statistics and every gradient except those
of the 1x1 and depthwise conv weights are bit-identical to the plain ``nn.Conv2d`` path; those
agree with oneDNN's to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from fcos_core.models import fast_batchnorm, fast_conv
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


def features(batch: int, size: int = 256) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, SEED["stride2channels"][s], size // s, size // s, generator=gen)
        .to(memory_format=torch.channels_last)
        .requires_grad_()
        for s in SEED["in_strides"]
    ]


@pytest.mark.parametrize("fpn_name", ["bifpn_sum", "bifpn_fa"])
@pytest.mark.parametrize("batch", [1, 2])
def test_training_step_matches_the_plain_conv_path(fpn_name, batch, monkeypatch):
    torch.manual_seed(0)
    fast = BiFPN(**{**SEED, "fpn_name": fpn_name})
    plain = BiFPN(**{**SEED, "fpn_name": fpn_name})
    plain.load_state_dict(fast.state_dict())
    for m in (fast, plain):
        m.train().to(memory_format=torch.channels_last)

    def step(model):
        model.zero_grad(set_to_none=True)
        feats = features(batch)
        outs = model(feats)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        return [o.detach() for o in outs], [f.grad for f in feats[2:]]

    calls = []
    real = fast_conv._FastWeightGradConv2d.apply
    monkeypatch.setattr(
        fast_conv._FastWeightGradConv2d, "apply", lambda *a: calls.append(a[-1]) or real(*a)
    )
    monkeypatch.setattr(fast_batchnorm, "ENABLED", False)
    out_fast, in_grads_fast = step(fast)
    n_pw = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in fast.modules())
    n_dw = sum(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in fast.modules())
    assert sorted(calls) == [1] * n_pw + [64] * n_dw  # every 1x1 and depthwise conv
    monkeypatch.setattr(fast_conv, "ENABLED", False)
    out_plain, in_grads_plain = step(plain)

    assert all(torch.equal(a, b) for a, b in zip(out_fast, out_plain))
    assert all(torch.equal(a, b) for a, b in zip(in_grads_fast, in_grads_plain))
    plain_params = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        q = plain_params[name]
        if p.dim() == 4 and (p.shape[-1] == 1 or p.shape[1] == 1):
            # sums of thousands of products: float32 rounding, relative to the largest entry
            assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name
        else:
            assert torch.equal(p.grad, q.grad), name
    for (name, a), b in zip(fast.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name


def test_exported_graph_sees_plain_convs():
    neck = BiFPN(**SEED).train().to(memory_format=torch.channels_last)
    feats = [f.detach() for f in features(2)]
    program = torch.export.export(neck, (feats,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.conv2d.default" in targets
    assert not any("FastWeightGrad" in t or "autograd" in t for t in targets)
