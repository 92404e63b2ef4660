"""The integer ops against independent integer (Python / NumPy int64) references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fcos_core.quantization import int_ops


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_is_accurate(real):
    m, n = int_ops.quantize_multiplier(torch.tensor([real], dtype=torch.float64))
    m, n = int(m), int(n)
    assert 1 <= n <= 62
    if n < 62:
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0**-n - real) <= real * 2.0**-30
    else:  # very small ratios lose precision but stay the nearest representable value
        assert abs(m - real * 2.0**62) <= 0.5


def test_quantize_multiplier_rejects_huge_ratios():
    with pytest.raises(ValueError, match="too large"):
        int_ops.quantize_multiplier(torch.tensor([2.0**40], dtype=torch.float64))


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(1, 62))
def test_requantize_rounds_half_up_like_python_integers(acc, m, n):
    out = int_ops.requantize(
        torch.tensor([acc]), torch.tensor(m), torch.tensor(n), -32768, 32767, torch.int16
    )
    ref = (acc * m + (1 << (n - 1))) >> n  # Python ints: exact, >> is floor division
    assert int(out) == max(-32768, min(32767, ref))


def test_requantize_ties_go_up_and_relu_clamps_at_zero():
    acc = torch.tensor([-3, -2, -1, 1, 2, 3, 5])  # times 1/2: -1.5 -1 -0.5 0.5 1 1.5 2.5
    out = int_ops.requantize(acc, torch.tensor(1), torch.tensor(1), -128, 127, torch.int8)
    assert out.tolist() == [-1, -1, 0, 1, 1, 2, 3]
    out = int_ops.requantize(
        acc, torch.tensor(1), torch.tensor(1), -128, 127, torch.int8, relu=True
    )
    assert out.tolist() == [0, 0, 0, 1, 1, 2, 3]


def _np_conv(x, w, b, stride, pad, groups):
    """int64 reference: explicit sum over the window."""
    n, _cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, cout, ho, wo), dtype=np.int64)
    per_group = cout // groups
    for c in range(cout):
        g = c // per_group
        xs = xp[:, g * cin_g : (g + 1) * cin_g]
        for i in range(ho):
            for j in range(wo):
                patch = xs[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                out[:, c, i, j] = (patch * w[c].astype(np.int64)).sum(axis=(1, 2, 3))
        if b is not None:
            out[:, c] += int(b[c])
    return out


@pytest.mark.parametrize("groups,stride", [(1, 1), (1, 2), (6, 1)])
def test_conv_accumulator_is_exact(groups, stride):
    g = torch.Generator().manual_seed(groups + stride)
    x = torch.randint(-128, 128, (2, 6, 7, 7), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (6, 6 // groups, 3, 3), generator=g, dtype=torch.int8)
    b = torch.randint(-(2**20), 2**20, (6,), generator=g, dtype=torch.int32)
    acc = int_ops.conv2d_acc(x, w, b, (stride, stride), (1, 1), (1, 1), groups)
    ref = _np_conv(x.numpy(), w.numpy(), b.numpy(), stride, 1, groups)
    assert acc.dtype == torch.int64
    assert np.array_equal(acc.numpy(), ref)


def test_conv_accumulator_is_exact_for_long_int16_sums():
    # 1152 input channels of int16 x int8: sums far beyond float32's 24-bit mantissa
    x = torch.full((1, 1152, 1, 1), 32767, dtype=torch.int16)
    w = torch.full((1, 1152, 1, 1), 127, dtype=torch.int8)
    acc = int_ops.conv2d_acc(x, w, None, (1, 1), (0, 0), (1, 1), 1)
    assert int(acc) == 1152 * 32767 * 127


def test_add_uses_one_rounding():
    a = torch.tensor([10, -7, 100], dtype=torch.int8)
    b = torch.tensor([3, 5, 100], dtype=torch.int8)
    out = int_ops.add(
        a, b, torch.tensor(3), torch.tensor(5), torch.tensor(2), -128, 127, torch.int8
    )
    ref = [max(-128, min(127, (int(x) * 3 + int(y) * 5 + 2) >> 2)) for x, y in zip(a, b)]
    assert out.tolist() == ref


def test_quantize_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0]) / 128
    q = int_ops.quantize(x, torch.tensor(1 / 128), -128, 127, torch.int8)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert q.tolist()[:5] == np.round(np.array([0.5, 1.5, 2.5, -0.5, -1.5])).astype(int).tolist()


def test_same_scale_ops_are_exact_in_the_integer_domain():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-32768, 32768, (2, 3, 8, 8), generator=g, dtype=torch.int16)
    mp = int_ops.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
    ref = F.max_pool2d(x.double(), 3, 2, 1).long()
    assert mp.dtype == torch.int16 and torch.equal(mp.long(), ref)
    up = int_ops.upsample_nearest2d(x, None, (2.0, 2.0))
    assert torch.equal(up, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(int_ops.relu(x), x.clamp_min(0))


def test_dequantize_is_the_exact_product_rounded_once():
    q = torch.tensor([[[[1]], [[-32768]]]], dtype=torch.int16)
    s = torch.tensor([0.1, 1e-4], dtype=torch.float32)
    out = int_ops.dequantize(q, s)
    assert out[0, 0, 0, 0].item() == np.float32(np.float64(np.float32(0.1)) * 1)
    assert out[0, 1, 0, 0].item() == np.float32(np.float64(np.float32(1e-4)) * -32768)


def test_bias_is_rounded_at_the_accumulator_scale():
    b = torch.tensor([0.3, -0.3, 1e9])
    s = torch.tensor([0.1, 0.1, 1e-3], dtype=torch.float64)
    q = int_ops.quantize_bias(b, s)
    assert q.dtype == torch.int32
    assert q.tolist()[:2] == [
        round(float(np.float32(0.3)) / 0.1),
        round(float(np.float32(-0.3)) / 0.1),
    ]
    assert q.tolist()[2] == 2**31 - 1  # saturated
