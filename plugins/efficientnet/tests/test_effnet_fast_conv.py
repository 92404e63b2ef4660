"""The faster conv weight gradients of eager CPU training (fcos_core.models.fast_conv).

With the fused BatchNorm kernel switched off (it has its own tests in
tests/models/test_cpu_kernels.py), forward outputs, running statistics and every gradient
except those of the depthwise and 1x1 conv weights are bit-identical to the plain
``nn.Conv2d`` path; those weight gradients agree with oneDNN's to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcos_core.models import fast_batchnorm, fast_conv
from fcos_core.models.fast_conv import depthwise_weight_grad, pointwise_weight_grad
from fcos_plugin_efficientnet.layers import ConvBNAct
from fcos_plugin_efficientnet.model import EfficientNet


def exact_weight_grad(g, x, weight, stride, padding, groups):
    """float64 autograd of F.conv2d: the exact value both float32 paths approximate."""
    w = weight.double().requires_grad_()
    F.conv2d(x.double(), w, None, stride, padding, 1, groups).backward(g.double())
    return w.grad


def stock_weight_grad(g, x, weight, stride, padding, groups):
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, stride, padding, (1, 1), False, (0, 0), groups, (False, True, False)
    )[1]


def assert_float32_close(ours, stock, exact):
    assert ours.shape == stock.shape
    scale = exact.abs().max()
    # each as close to the exact value as the other: a few ulps of the sums
    assert (ours.double() - exact).abs().max() / scale < 1e-5
    assert (stock.double() - exact).abs().max() / scale < 1e-5


@pytest.mark.parametrize(
    "n,c,h,w,k,s",
    [
        (1, 24, 16, 16, 5, 1),
        (1, 24, 17, 15, 5, 2),
        (2, 16, 16, 16, 5, 2),
        (3, 8, 9, 11, 7, 1),
        (1, 40, 12, 12, 3, 1),
        (2, 32, 8, 8, 5, 1),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_weight_grad_matches_autograd(n, c, h, w, k, s, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w).to(memory_format=fmt)
    weight = torch.randn(c, 1, k, k).to(memory_format=fmt)
    p = k // 2
    g = torch.randn_like(F.conv2d(x, weight, None, s, p, 1, c))
    assert_float32_close(
        depthwise_weight_grad(g, x, (k, k), (s, s), (p, p)),
        stock_weight_grad(g, x, weight, (s, s), (p, p), c),
        exact_weight_grad(g, x, weight, s, p, c),
    )


@pytest.mark.parametrize("n,o,i,h,w", [(1, 64, 64, 32, 32), (2, 24, 144, 9, 7), (3, 40, 8, 4, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_weight_grad_matches_autograd(n, o, i, h, w, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, i, h, w).to(memory_format=fmt)
    weight = torch.randn(o, i, 1, 1).to(memory_format=fmt)
    g = torch.randn(n, o, h, w).to(memory_format=fmt)
    assert_float32_close(
        pointwise_weight_grad(g, x),
        stock_weight_grad(g, x, weight, (1, 1), (0, 0), 1),
        exact_weight_grad(g, x, weight, 1, 0, 1),
    )


def test_fast_path_is_taken_only_where_it_helps():
    cl = torch.channels_last
    x = torch.randn(1, 8, 8, 8)
    dw5, dw3 = ConvBNAct(8, 8, 5, groups=8).conv, ConvBNAct(8, 8, 3, groups=8).conv
    pw, dense3 = ConvBNAct(8, 16, 1).conv, ConvBNAct(8, 8, 3).conv
    use = fast_conv.use_fast_weight_grad
    assert use(dw5, x) and use(dw5, x.to(memory_format=cl))
    assert use(pw, x.to(memory_format=cl)) and not use(pw, x)  # 1x1: channels-last only
    assert use(dw3, x.to(memory_format=cl)) and not use(dw3, x)  # 3x3: channels-last only
    assert not use(dense3, x.to(memory_format=cl))
    with torch.no_grad():
        assert not use(dw5, x)
    handle = dw5.register_forward_hook(lambda *_: None)
    assert not use(dw5, x)
    handle.remove()
    dw5.weight.requires_grad_(False)
    assert not use(dw5, x)


@pytest.mark.parametrize("batch", [1, 2])
def test_model_training_step_matches_the_plain_conv_path(batch, monkeypatch):
    torch.manual_seed(0)
    fast = EfficientNet("b0", activation="relu", use_se_block=False, drop_connect_rate=0.0)
    plain = EfficientNet("b0", activation="relu", use_se_block=False, drop_connect_rate=0.0)
    plain.load_state_dict(fast.state_dict())
    for m in (fast, plain):
        m.train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 64, 64).to(memory_format=torch.channels_last)

    def step(model):
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        return [o.detach() for o in outs]

    calls = []
    real = fast_conv._FastWeightGradConv2d.apply
    monkeypatch.setattr(
        fast_conv._FastWeightGradConv2d, "apply", lambda *a: calls.append(a[-1]) or real(*a)
    )
    monkeypatch.setattr(fast_batchnorm, "ENABLED", False)
    out_fast = step(fast)
    # b0 on channels-last input: 16 depthwise convs (7 3x3, 9 5x5), 15 expansion and 16
    # projection 1x1 convs
    assert sum(g > 1 for g in calls) == 16 and sum(g == 1 for g in calls) == 31
    monkeypatch.setattr(fast_conv, "ENABLED", False)
    out_plain = step(plain)

    assert all(torch.equal(a, b) for a, b in zip(out_fast, out_plain))
    plain_params = dict(plain.named_parameters())
    changed = 0
    for name, p in fast.named_parameters():
        q = plain_params[name]
        if p.dim() == 4 and (p.shape[1] == 1 or p.shape[-1] == 1):
            # sums of thousands of products: float32 rounding, relative to the largest entry
            assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name
            changed += 1
        else:  # stem, BN: untouched
            assert torch.equal(p.grad, q.grad), name
    assert changed == 47
    for (name, a), b in zip(fast.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name


def test_traced_and_exported_graphs_see_plain_convs():
    model = EfficientNet("b0", drop_connect_rate=0.0).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    traced = torch.jit.trace(model, x, check_trace=False)
    assert "PythonOp" not in str(traced.inlined_graph)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "aten.conv2d.default" in targets
    assert not any("FastWeightGrad" in t or "autograd" in t for t in targets)
    graph = torch.fx.symbolic_trace(model).graph
    assert not any("FastWeightGrad" in str(n.target) for n in graph.nodes)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert sum(n.op == "call_module" and "conv" in str(n.target) for n in graph.nodes) == n_convs


def test_every_batchnorm_trains_through_the_fused_kernel(monkeypatch):
    """b0 without top has 48 BatchNorms (stem, 15 expansions, 16 depthwise, 16 projections);
    all but the projections have a ReLU after them, which the kernel runs too. Outputs and
    gradients of the training step are as close to the float64 model as the stock float32
    modules are (48 BatchNorms over 8 values per channel at the 2x2 level amplify rounding, so
    the stock path is the yardstick, not a fixed tolerance)."""
    from fcos_core.models import cpu_kernels

    assert cpu_kernels.available(), cpu_kernels.error()
    torch.manual_seed(0)

    def build():
        return EfficientNet("b0", activation="relu", use_se_block=False, drop_connect_rate=0.0)

    fused, stock, exact = build(), build(), build().double()
    stock.load_state_dict(fused.state_dict())
    exact.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    calls = []
    real = fast_batchnorm._BatchNormAct.apply
    monkeypatch.setattr(
        fast_batchnorm._BatchNormAct, "apply", lambda *a: calls.append(a[-1]) or real(*a)
    )

    def step(model, inp, enabled):
        model.train().to(memory_format=torch.channels_last).zero_grad()
        with monkeypatch.context() as m:
            m.setattr(fast_batchnorm, "ENABLED", enabled)
            m.setattr(fast_conv, "ENABLED", enabled)
            outs = model(inp)
        gen = torch.Generator().manual_seed(1)
        sum((o * torch.randn(o.shape, generator=gen).to(o.dtype)).sum() for o in outs).backward()
        return [o.detach() for o in outs] + [p.grad for p in model.parameters()]

    ours = step(fused, x, True)
    assert sorted(calls) == [False] * 16 + [True] * 32
    theirs = step(stock, x, False)
    ref = step(exact, x.double(), False)

    def err(a, r):
        return ((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()

    for k, (o, t, r) in enumerate(zip(ours, theirs, ref)):
        assert err(o, r) <= 4 * err(t, r) + 1e-5, k
