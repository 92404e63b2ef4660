"""The numpy kernels against torch's own operators (independent references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcos_plugin_nash_e import kernels as K
from fcos_plugin_nash_e.lower import pool_padding


@pytest.mark.parametrize(
    "groups, k, stride, pad",
    [(1, 3, 1, 1), (1, 1, 2, 0), (4, 3, 2, 1), (8, 5, 1, 2), (8, 3, 2, 1), (1, 7, 2, 3)],
)
def test_conv_accumulator_matches_torch(groups, k, stride, pad):
    g = torch.Generator().manual_seed(k * 10 + groups)
    x = torch.randint(-128, 128, (1, 8, 13, 11), generator=g, dtype=torch.int8)
    cout = 8 if groups == 8 else 12
    w = torch.randint(-128, 128, (cout, 8 // groups, k, k), generator=g, dtype=torch.int8)
    b = torch.randint(-5000, 5000, (cout,), generator=g, dtype=torch.int32)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, pad, 1, groups).long()
    out = K.conv2d_acc(
        x.numpy(), 0, w.numpy(), b.numpy(), (stride, stride), (pad, pad, pad, pad), groups
    )
    assert out.dtype == np.int64 and np.array_equal(out, ref.numpy())


def test_conv_with_zero_point_pads_with_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 6, 6), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 3, 3, 3), generator=g, dtype=torch.int8)
    ref = F.conv2d(x.double() - 100, w.double(), None, 1, 1).long()
    out = K.conv2d_acc(x.numpy(), 100, w.numpy(), np.zeros(4, np.int32), (1, 1), (1, 1, 1, 1), 1)
    assert np.array_equal(out, ref.numpy())


@pytest.mark.parametrize(
    "k, s, p, ceil",
    [(2, 2, 0, False), (3, 2, 1, False), (2, 2, 0, True), (3, 2, 1, True), (3, 1, 1, False)],
)
@pytest.mark.parametrize("size", [(9, 9), (8, 11)])
def test_maxpool_matches_torch(k, s, p, ceil, size):
    x = torch.randint(-32768, 32767, (1, 3, *size), dtype=torch.int16)
    ref = F.max_pool2d(x.float(), k, s, p, 1, ceil).to(torch.int16)
    attrs = {"kernel_size": (k, k), "stride": (s, s), "padding": (p, p), "ceil_mode": ceil}
    out = K.maxpool2d(x.numpy(), (k, k), (s, s), pool_padding(attrs, *size))
    assert np.array_equal(out, ref.numpy())


def test_upsample_matches_torch():
    x = torch.randint(-128, 128, (1, 4, 5, 7), dtype=torch.int8)
    ref = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(torch.int8)
    assert np.array_equal(K.upsample_nearest(x.numpy(), 2), ref.numpy())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantize_matches_torch_quantize_per_tensor():
    x = torch.randn(10000) * 3
    x[:100] = torch.arange(100) / 256.0  # exact ties at scale 1/128
    for scale in (1 / 128, 0.0173, 0.3):
        ref = torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr()
        assert np.array_equal(K.quantize(x.numpy(), scale, 0, "int8"), ref.numpy())


def test_round_shift_rounds_half_up_exactly():
    rng = np.random.default_rng(0)
    v = rng.integers(-(2**40), 2**40, 5000)
    for n in (1, 7, 20, 31):
        expected = np.array([(int(a) + (1 << (n - 1))) // (1 << n) for a in v])
        assert np.array_equal(K.round_shift(v, n), expected)
    assert K.round_shift(np.array([-3, -2, -1, 1, 2, 3]), 1).tolist() == [-1, -1, 0, 1, 1, 2]
