"""fcos's C++ kernels for eager CPU training (fcos_core.models.cpu_kernels) and the modules
that route through them (fast_batchnorm, fast_conv).

References: float64 autograd of ``F.batch_norm`` / ``F.conv2d`` (the exact values), and
``nn.BatchNorm2d`` for the running statistics. Each float32 result must be as close to the
float64 value as ATen's own float32 kernel is, or closer.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcos_core.models import cpu_kernels, fast_batchnorm, fast_conv

CL = torch.channels_last


def test_kernels_build_here():
    # the project's machines have a C++ compiler; the fallback has its own test below
    assert cpu_kernels.available(), cpu_kernels.error()


def rel_err(value: torch.Tensor, exact: torch.Tensor) -> float:
    return ((value.double() - exact).abs().max() / exact.abs().max().clamp_min(1e-30)).item()


def exact_bn(x, w, b, g, relu):
    """float64 forward output and (grad_x, grad_w, grad_b) of [relu](batch_norm(x))."""
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    y = F.batch_norm(xd, None, None, wd, bd, True, 0.1, 1e-5)
    if relu:
        y = torch.relu(y)
    grads = torch.autograd.grad(y, (xd, wd, bd), g.double())
    return y.detach(), grads


def stock_bn(x, w, b, g, relu):
    """ATen's float32 kernels: output and grads."""
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = F.batch_norm(xs, None, None, ws, bs, True, 0.1, 1e-5)
    if relu:
        y = torch.relu(y)
    return y.detach(), torch.autograd.grad(y, (xs, ws, bs), g)


def fused_bn(x, w, b, g, relu, min_elements=cpu_kernels.MIN_ELEMENTS_PER_THREAD):
    c = x.shape[1]
    y, mean, invstd = torch.ops.fcos_kernels.batch_norm_act_forward(
        x, w, b, torch.zeros(c), torch.ones(c), 0.1, 1e-5, relu, min_elements
    )
    grads = torch.ops.fcos_kernels.batch_norm_act_backward(
        g.contiguous(memory_format=CL), x, w, b, mean, invstd, relu, min_elements
    )
    return y, grads


@pytest.mark.parametrize(
    "shape",
    [(1, 16, 9, 7), (2, 3, 5, 5), (4, 17, 6, 6), (1, 64, 32, 32), (3, 40, 1, 2), (2, 8, 1, 1)],
)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_batch_norm_act_matches_float64(shape, relu, offset):
    gen = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    # an offset far from zero: the variance must not cancel away (shifted-data algorithm)
    x = (torch.randn(shape, generator=gen) * 2 + offset).to(memory_format=CL)
    w, b = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen) * 0.3
    g = torch.randn(shape, generator=gen).to(memory_format=CL)
    y_exact, grads_exact = exact_bn(x, w, b, g, relu)
    y_stock, grads_stock = stock_bn(x, w, b, g, relu)
    y, grads = fused_bn(x, w, b, g, relu)
    assert y.is_contiguous(memory_format=CL) and grads[0].is_contiguous(memory_format=CL)
    # 1e-5: with two values per channel (shape (2, 8, 1, 1)) the output is +-1 times the
    # weight, and any float32 mean costs a few ulps of it
    assert rel_err(y, y_exact) <= max(1e-5, 1.5 * rel_err(y_stock, y_exact))
    for ours, stock, exact in zip(grads, grads_stock, grads_exact):
        assert ours.shape == exact.shape
        assert rel_err(ours, exact) <= max(1e-5, 1.5 * rel_err(stock, exact))


def test_batch_norm_act_more_accurate_than_aten_on_large_offset_tensors():
    """ATen's float32 channels-last batch norm loses most digits of grad_input when the mean is
    large next to the spread; the kernel's double-joined block sums do not."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 24, 128, 128)
    x = (torch.randn(shape, generator=gen) * 3 + 5).to(memory_format=CL)
    w, b = torch.rand(24, generator=gen) + 0.5, torch.randn(24, generator=gen) * 0.1
    g = torch.randn(shape, generator=gen).to(memory_format=CL)
    _, exact = exact_bn(x, w, b, g, True)
    _, stock = stock_bn(x, w, b, g, True)
    _, ours = fused_bn(x, w, b, g, True)
    for o, s, e in zip(ours, stock, exact):
        assert rel_err(o, e) < 1e-5
        assert rel_err(o, e) <= rel_err(s, e)


def test_threaded_and_single_threaded_passes_agree():
    if torch.get_num_threads() < 2:
        torch.set_num_threads(2)  # restored below; the split needs two threads to matter
        restore = 1
    else:
        restore = None
    try:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, 24, 40, 40, generator=gen).to(memory_format=CL)
        w, b = torch.rand(24, generator=gen) + 0.5, torch.randn(24, generator=gen)
        g = torch.randn_like(x)
        y1, g1 = fused_bn(x, w, b, g, True, min_elements=1 << 30)  # one thread
        y2, g2 = fused_bn(x, w, b, g, True, min_elements=64)  # split over threads
        assert (y1 - y2).abs().max() <= 1e-6 * y1.abs().max()
        for a, c in zip(g1, g2):
            assert (a - c).abs().max() <= 1e-5 * a.abs().max()
        gy = torch.randn(2, 24, 20, 20, generator=gen).to(memory_format=CL)
        dw1 = torch.ops.fcos_kernels.depthwise_weight_grad(gy, x, 3, 3, 2, 2, 1, 1, 1 << 30)
        dw2 = torch.ops.fcos_kernels.depthwise_weight_grad(gy, x, 3, 3, 2, 2, 1, 1, 64)
        assert (dw1 - dw2).abs().max() <= 1e-5 * dw1.abs().max()
    finally:
        if restore:
            torch.set_num_threads(restore)


def test_kernels_reject_what_they_do_not_handle():
    x = torch.randn(1, 8, 4, 4)  # NCHW, not channels-last
    with pytest.raises(RuntimeError, match="channels-last"):
        torch.ops.fcos_kernels.batch_norm_act_forward(
            x,
            torch.ones(8),
            torch.zeros(8),
            torch.zeros(8),
            torch.ones(8),
            0.1,
            1e-5,
            True,
            1 << 16,
        )
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.fcos_kernels.depthwise_weight_grad(
            x.double().to(memory_format=CL),
            x.double().to(memory_format=CL),
            3,
            3,
            1,
            1,
            1,
            1,
            1 << 16,
        )
    one = torch.randn(1, 8, 1, 1).to(memory_format=CL)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        torch.ops.fcos_kernels.batch_norm_act_forward(
            one,
            torch.ones(8),
            torch.zeros(8),
            torch.zeros(8),
            torch.ones(8),
            0.1,
            1e-5,
            True,
            1 << 16,
        )


@pytest.mark.parametrize(
    "n,c,h,w,k,s",
    [
        (1, 24, 16, 16, 5, 1),
        (1, 24, 17, 15, 5, 2),
        (2, 16, 16, 16, 5, 2),
        (3, 5, 11, 9, 7, 2),
        (1, 40, 12, 12, 3, 1),
        (2, 13, 9, 10, 3, 2),
        (4, 32, 8, 8, 3, 1),
        (1, 8, 3, 3, 5, 1),
        (2, 6, 7, 7, 4, 1),
    ],
)
def test_depthwise_weight_grad_matches_float64(n, c, h, w, k, s):
    gen = torch.Generator().manual_seed(n * 100 + c)
    x = torch.randn(n, c, h, w, generator=gen).to(memory_format=CL)
    weight = torch.randn(c, 1, k, k, generator=gen)
    p = k // 2
    g = torch.randn_like(F.conv2d(x, weight, None, s, p, 1, c)).to(memory_format=CL)
    wd = weight.double().requires_grad_()
    F.conv2d(x.double(), wd, None, s, p, 1, c).backward(g.double())
    stock = torch.ops.aten.convolution_backward(
        g, x, weight, None, (s, s), (p, p), (1, 1), False, (0, 0), c, (False, True, False)
    )[1]
    ours = torch.ops.fcos_kernels.depthwise_weight_grad(g, x, k, k, s, s, p, p, 1 << 16)
    assert ours.shape == weight.shape and ours.is_contiguous()
    assert rel_err(ours, wd.grad) <= max(2e-6, 1.5 * rel_err(stock, wd.grad))


class ConvBNReLU(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, k: int, groups: int = 1, relu: bool = True, **bn_kwargs
    ) -> None:
        layers = [
            nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, **bn_kwargs),
        ]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu else []))

    def forward(self, x):
        return fast_conv.sequential_forward(self, x)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("relu", [True, False])
def test_module_training_matches_the_stock_modules(momentum, relu, monkeypatch):
    """Three training steps of conv-BN(-ReLU) blocks through the fused path and through the
    stock modules in float32, both against the stock modules in float64: every output,
    gradient and running statistic is as close to float64 as the stock float32 one."""
    torch.manual_seed(0)

    def build():
        return nn.Sequential(
            ConvBNReLU(8, 16, 1, relu=relu, momentum=momentum),
            ConvBNReLU(16, 16, 3, groups=16, relu=relu, momentum=momentum),
        )

    fused, stock, exact = build(), build(), build().double()
    stock.load_state_dict(fused.state_dict())
    exact.load_state_dict(fused.state_dict())
    calls = []
    real = fast_batchnorm._BatchNormAct.apply
    monkeypatch.setattr(
        fast_batchnorm._BatchNormAct, "apply", lambda *a: calls.append(a[-1]) or real(*a)
    )

    def step(model, x, use_kernels):
        model.zero_grad()
        x = x.detach().clone().requires_grad_()
        with monkeypatch.context() as m:
            m.setattr(fast_batchnorm, "ENABLED", use_kernels)
            m.setattr(fast_conv, "ENABLED", use_kernels)
            y = model(x)
        # a random weighting: a structured one (linspace) makes some BN weight gradients
        # cancel to a few digits, where any float32 summation order looks "wrong"
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
        (y * weights.to(y.dtype)).sum().backward()
        return (
            [y.detach(), x.grad]
            + [p.grad for p in model.parameters()]
            + [b for b in model.buffers() if b.dtype != torch.long]
        )

    for i in range(3):
        x = (torch.randn(2, 8, 12, 12) + i).to(memory_format=CL)
        ours = step(fused, x, True)
        theirs = step(stock, x, False)
        ref = step(exact, x.double(), False)
        for k, (o, t, r) in enumerate(zip(ours, theirs, ref)):
            assert rel_err(o, r) <= 3 * rel_err(t, r) + 1e-6, k
        for a, b in zip(fused.buffers(), stock.buffers()):
            if a.dtype == torch.long:
                assert torch.equal(a, b)  # num_batches_tracked
    assert calls == [relu, relu] * 3


def test_fused_path_only_where_it_applies():
    bn = nn.BatchNorm2d(8).train()
    x = torch.randn(2, 8, 4, 4)
    use = fast_batchnorm.use_fused_batch_norm
    assert use(bn, x.to(memory_format=CL))
    assert not use(bn, x)  # NCHW
    assert not use(bn, x.double().to(memory_format=CL))
    with torch.no_grad():
        assert not use(bn, x.to(memory_format=CL))
    assert not use(bn.eval(), x.to(memory_format=CL))
    bn.train()
    assert not use(nn.BatchNorm2d(8, affine=False), x.to(memory_format=CL))
    assert not use(nn.BatchNorm2d(8, track_running_stats=False), x.to(memory_format=CL))
    assert not use(nn.SyncBatchNorm(8), x.to(memory_format=CL))
    handle = bn.register_forward_hook(lambda *_: None)
    assert not use(bn, x.to(memory_format=CL))
    handle.remove()
    assert not use(bn, torch.randn(1, 8, 1, 1).to(memory_format=CL))  # one value per channel


def test_graphs_see_the_stock_modules():
    block = ConvBNReLU(8, 8, 3, groups=8).train()
    x = torch.randn(2, 8, 8, 8).to(memory_format=CL)
    traced = torch.jit.trace(block, x, check_trace=False)
    assert "PythonOp" not in str(traced.inlined_graph)
    assert "batch_norm" in str(traced.inlined_graph)
    exported = torch.export.export(block, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("fcos_kernels" in t for t in targets)
    assert any("batch_norm" in t for t in targets)


def test_unbuildable_kernels_fall_back_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("g++: command not found")

    monkeypatch.setattr(cpu_kernels, "_state", {"available": None, "error": None})
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="g\\+\\+: command not found"):
        assert cpu_kernels.available() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not at every call
        assert cpu_kernels.available() is False
    block = ConvBNReLU(4, 4, 3, groups=4).train()
    x = torch.randn(2, 4, 6, 6).to(memory_format=CL)
    assert not fast_batchnorm.use_fused_batch_norm(block[1], x)
    block(x).sum().backward()  # the stock modules train
    assert "g++: command not found" in cpu_kernels.error()


def test_environment_switch(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_state", {"available": None, "error": None})
    monkeypatch.setenv("FCOS_CPU_KERNELS", "0")
    assert cpu_kernels.available() is False
    assert cpu_kernels.error() == "FCOS_CPU_KERNELS=0"
