"""Observers against NumPy / hand references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.histogram_observers import KLObserver, MSEObserver
from fcos_core.quantization.observers import (
    FixedRangeObserver,
    MinMaxObserver,
    PercentileObserver,
    PerChannelAbsMaxObserver,
)


def _batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # activation-like: ReLU'd Gaussian (many exact zeros), a negative tail and rare outliers
    out = []
    for k in range(3):
        x = torch.randn(4, 8, 16, 16, generator=g) * (1.0 + 0.3 * k)
        x = torch.where(x > -0.5, x.clamp_min(0), x)
        x.view(-1)[::4999] *= 8.0
        out.append(x)
    return out


def test_minmax_is_the_true_min_and_max():
    obs = MinMaxObserver()
    data = _batches()
    for x in data:
        obs(x)
    allv = torch.cat([x.flatten() for x in data])
    assert obs.min_val.item() == allv.min().item()
    assert obs.max_val.item() == allv.max().item()
    scale, zp = obs.calculate_qparams()
    amax = max(-allv.min().item(), allv.max().item())
    assert scale.item() == pytest.approx(amax / 127, rel=1e-6)
    assert zp.item() == 0


def test_minmax_moving_average_follows_the_formula():
    obs = MinMaxObserver(averaging_constant=0.25)
    data = _batches()
    for x in data:
        obs(x)
    lo = data[0].min().item()
    hi = data[0].max().item()
    for x in data[1:]:
        lo += 0.25 * (x.min().item() - lo)
        hi += 0.25 * (x.max().item() - hi)
    assert obs.min_val.item() == pytest.approx(lo, rel=1e-6)
    assert obs.max_val.item() == pytest.approx(hi, rel=1e-6)


@pytest.mark.parametrize("q", [99.0, 99.99, 100.0])
def test_percentile_equals_numpy(q):
    x = _batches()[0]
    obs = PercentileObserver(percentile=q)
    obs(x)
    ref = np.percentile(np.abs(x.numpy()).astype(np.float64), q)
    assert obs.max_val.item() == pytest.approx(ref, rel=1e-6)
    assert obs.min_val.item() == pytest.approx(-ref, rel=1e-6)


def test_percentile_over_batches_is_the_mean_of_batch_percentiles():
    data = _batches()
    obs = PercentileObserver(percentile=99.9)
    for x in data:
        obs(x)
    ref = np.mean([np.percentile(np.abs(x.numpy()).astype(np.float64), 99.9) for x in data])
    assert obs.max_val.item() == pytest.approx(ref, rel=1e-6)


def _exact_mse(x: torch.Tensor, clip: float, qmax: int = 127) -> float:
    s = clip / qmax
    q = torch.clamp(torch.round(x.double() / s), -qmax - 1, qmax) * s
    return float(((q - x.double()) ** 2).mean())


def test_mse_picks_the_clip_minimising_measured_mse_over_the_grid():
    data = _batches()
    obs = MSEObserver(num_candidates=100)
    for x in data:
        obs(x)
    chosen = obs.range()[1]
    allv = torch.cat([x.flatten() for x in data])
    hist_max = allv.abs().max().item()
    grid = [hist_max * k / 100 for k in range(1, 101)]
    measured = [_exact_mse(allv, c) for c in grid]
    best = int(np.argmin(measured))
    # the histogram approximation must land on (or next to) the measured optimum
    assert _exact_mse(allv, chosen) <= measured[best] * 1.02
    assert abs(grid.index(min(grid, key=lambda c: abs(c - chosen))) - best) <= 3
    assert 0 < chosen <= hist_max


def _kl_reference(hist: np.ndarray, levels: int) -> int:
    """Straightforward loop version of the documented KL rule; returns the best bin count."""
    n = len(hist)
    best_i, best_kl = None, math.inf
    for i in range(levels, n + 1):
        p = [float(v) for v in hist[:i]]
        p[i - 1] += float(sum(hist[i:]))
        q = [0.0] * i
        for g in range(levels):
            members = [j for j in range(i) if (j * levels) // i == g]
            mass = sum(float(hist[j]) for j in members)
            support = [j for j in members if p[j] > 0]
            for j in support:
                q[j] = mass / len(support)
        ps, qs = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q):
            if pj > 0:
                kl += (pj / ps) * math.log((pj / ps) / max(qj / qs, 1e-12))
        if kl < best_kl:
            best_i, best_kl = i, kl
    assert best_i is not None
    return best_i


def test_kl_matches_a_straightforward_reference():
    bins = 64
    obs = KLObserver(bins=bins, dtype=torch.int8, quant_min=-8, quant_max=7)  # 8 levels
    data = torch.cat([x.flatten() for x in _batches()])
    obs(data)  # one batch: the histogram is not rebinned, so numpy's is the same
    allv = data.abs()
    hist_max = allv.max().item()
    hist = np.histogram(allv[allv > 0].numpy().astype(np.float64), bins=bins, range=(0, hist_max))[
        0
    ].astype(np.float64)
    hist[0] += float((allv == 0).sum())
    best = _kl_reference(hist, 8)
    assert obs.range()[1] == pytest.approx(best * hist_max / bins, rel=1e-5)


def test_histogram_observers_handle_a_growing_range_and_zeros():
    obs = MSEObserver()
    obs(torch.zeros(100))
    assert obs.has_data() and obs.range() == (0.0, 0.0)
    obs(torch.linspace(-1, 1, 1000))
    obs(torch.linspace(-4, 4, 1000))
    assert 0 < obs.range()[1] <= 4.0
    assert obs.hist.sum().item() == pytest.approx(1998, abs=2)  # zeros are counted apart


def test_weight_observer_is_per_channel_and_follows_the_current_weight():
    obs = PerChannelAbsMaxObserver()
    w = torch.randn(6, 3, 3, 3)
    obs(w * 10)
    obs(w)
    amax = w.abs().flatten(1).max(1).values
    scale, zp = obs.calculate_qparams()
    assert torch.allclose(scale, amax / 127, rtol=1e-6)
    assert scale.shape == (6,) and (zp == 0).all()


def test_fixed_range_is_exact_and_never_observes():
    obs = FixedRangeObserver(scale=1 / 128)
    obs(torch.full((4,), 100.0))
    assert obs.calculate_qparams()[0].item() == 1 / 128


def test_every_observer_saves_the_same_keys():
    """A calibration checkpoint (any observer) loads into a QAT model (min-max)."""
    keys = set()
    for cls in (MinMaxObserver, PercentileObserver, MSEObserver, KLObserver):
        fq = FcosFakeQuantize(observer=cls)
        fq(torch.randn(2, 3, 4, 4))
        keys.add(tuple(sorted(fq.state_dict())))
    assert len(keys) == 1
    assert keys.pop() == (
        "activation_post_process.max_val",
        "activation_post_process.min_val",
        "scale",
        "zero_point",
    )


def test_fake_quant_rounds_like_torch_and_flags_are_not_saved():
    fq = FcosFakeQuantize(observer=MinMaxObserver, dtype=torch.int16)
    x = torch.linspace(-3, 3, 101)
    y = fq(x)
    s = fq.scale.item()
    assert s == pytest.approx(3 / 32767, rel=1e-6)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, s, 0, -32768, 32767))
    fq.enable_observer(False)
    sd = fq.state_dict()
    assert "observer_enabled" not in sd and "fake_quant_enabled" not in sd
    fresh = FcosFakeQuantize(observer=MinMaxObserver, dtype=torch.int16)
    fresh.load_state_dict(sd)
    assert fresh.observer_enabled.item() == 1  # the mode comes from the converter
    assert fresh.scale.item() == s


def test_observer_arguments_are_checked():
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=0)
    with pytest.raises(ValueError, match="averaging_constant"):
        MinMaxObserver(averaging_constant=2.0)
    with pytest.raises(ValueError, match="dtype"):
        MinMaxObserver(dtype=torch.float32)
