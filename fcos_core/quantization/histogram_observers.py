"""Histogram observers that choose a clip: MSE and KL (entropy) calibration.

Both keep a histogram of |x| over ``[0, hist_max]`` (``bins`` bins; the range grows with the
data, old counts are moved to the new bin that holds their old bin centre) and choose the
symmetric clip ``c`` lazily, when the range is asked for (fake-quant, ``calculate_qparams``,
``state_dict``). The histogram is working state (not persistent): a checkpoint holds the chosen
range in ``min_val``/``max_val`` = (-c, c), like every fcos observer. The exact selection rules
are written in docs/quantization.md ("Calibration observers").
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from fcos_core.quantization.observers import SymmetricObserver


class _AbsHistogramObserver(SymmetricObserver, abc.ABC):
    """Histogram of |x| (zeros counted apart) and a lazily chosen clip."""

    def __init__(self, bins: int = 2048, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if bins < 16:
            raise ValueError(f"bins: must be >= 16, got {bins}")
        self.bins = int(bins)
        self.register_buffer("hist", torch.zeros(self.bins, dtype=torch.float64), persistent=False)
        self.register_buffer("num_zeros", torch.tensor(0.0, dtype=torch.float64), persistent=False)
        self.register_buffer("hist_max", torch.tensor(0.0, dtype=torch.float64), persistent=False)
        self._stale = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        a = x.detach().abs().flatten().float()
        nonzero = a[a > 0]
        self.num_zeros += a.numel() - nonzero.numel()
        self._stale = True
        if nonzero.numel() == 0:
            return x
        amax = float(nonzero.max())
        if amax > float(self.hist_max):
            self._grow(amax)
        hm = float(self.hist_max)
        # histc puts values equal to max into the last bin, which is what we want
        self.hist += torch.histc(nonzero, bins=self.bins, min=0.0, max=hm).double()
        return x

    def _grow(self, new_max: float) -> None:
        old_max = float(self.hist_max)
        if old_max > 0 and float(self.hist.sum()) > 0:
            centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (old_max / self.bins)
            idx = (centres / (new_max / self.bins)).floor().long().clamp_(0, self.bins - 1)
            self.hist = torch.zeros_like(self.hist).index_add_(0, idx, self.hist)
        self.hist_max.fill_(new_max)

    def _refresh(self) -> None:
        if not self._stale:
            return
        self._stale = False
        if float(self.hist.sum()) == 0:
            if float(self.num_zeros) > 0:  # only zeros seen: the range is [0, 0]
                self.min_val.fill_(0.0)
                self.max_val.fill_(0.0)
            return
        clip = self._choose_clip(
            self.hist.cpu().numpy(), float(self.num_zeros), float(self.hist_max)
        )
        self.min_val.fill_(-clip)
        self.max_val.fill_(clip)

    def _loaded(self) -> None:
        self.hist.zero_()
        self.num_zeros.zero_()
        self.hist_max.zero_()
        self._stale = False

    @abc.abstractmethod
    def _choose_clip(self, hist: np.ndarray, zeros: float, hist_max: float) -> float:
        """The clip value (|x| range) chosen from the histogram of |x|."""


def _sawtooth_integral(u: np.ndarray) -> np.ndarray:
    """G(u) = integral of (t - round(t))^2 dt, up to a constant: k/12 + (r^3 + 1/8)/3 with
    k = floor(u + 1/2), r = u - k (the mean squared rounding error of a bin, in closed form)."""
    k = np.floor(u + 0.5)
    r = u - k
    return k / 12.0 + (r**3 + 0.125) / 3.0


def histogram_quant_mse(
    hist: np.ndarray, hist_max: float, clips: np.ndarray, quant_max: int
) -> np.ndarray:
    """Expected squared error of symmetric quantization with each clip, from a histogram of |x|.

    Values are taken as uniform inside each bin: inside ``[0, c]`` the error is the rounding
    sawtooth of step ``s = c / quant_max``, above ``c`` it is ``(v - c)^2``. Returns the sum
    of squared errors per clip (zeros, not in the histogram, add no error).
    """
    w = hist_max / hist.size
    used = np.nonzero(hist)[0]  # empty bins add nothing; skipping them saves most of the work
    hist = hist[used]
    lo = used.astype(np.float64)[None, :] * w
    hi = lo + w
    c = clips.astype(np.float64)[:, None]
    s = c / quant_max
    a_in, b_in = np.minimum(lo, c), np.minimum(hi, c)
    rounding = s**3 * (_sawtooth_integral(b_in / s) - _sawtooth_integral(a_in / s))
    a_out, b_out = np.maximum(lo, c) - c, np.maximum(hi, c) - c
    clipping = (b_out**3 - a_out**3) / 3.0
    per_bin = (rounding + clipping) / w  # mean error over the bin's width
    return (per_bin * hist[None, :]).sum(axis=1)


class MSEObserver(_AbsHistogramObserver):
    """Clip minimising the quantization MSE over a grid ``c_k = hist_max * k / num_candidates``.

    Args:
        bins: histogram bins (2048).
        num_candidates: grid size of the clip search (100).
    """

    def __init__(self, bins: int = 2048, num_candidates: int = 100, **kwargs: object) -> None:
        super().__init__(bins=bins, **kwargs)
        if num_candidates < 2:
            raise ValueError(f"num_candidates: must be >= 2, got {num_candidates}")
        self.num_candidates = int(num_candidates)

    def _choose_clip(self, hist: np.ndarray, zeros: float, hist_max: float) -> float:
        clips = hist_max * np.arange(1, self.num_candidates + 1) / self.num_candidates
        mse = histogram_quant_mse(hist, hist_max, clips, self.quant_max)
        return float(clips[int(np.argmin(mse))])


def kl_divergence_per_threshold(
    hist: np.ndarray, num_levels: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate bin counts ``i``, KL(P_i || Q_i)) of entropy calibration.

    For a threshold at bin ``i``: ``P`` is ``hist[:i]`` with the mass of ``hist[i:]`` added to
    its last bin; ``Q`` merges ``hist[:i]`` into ``num_levels`` groups (bin ``j`` in group
    ``floor(j * num_levels / i)``) and spreads each group's mass evenly over its bins where
    ``P > 0``. Both are normalised; ``KL = sum_{P>0} p log(p / max(q, 1e-12))``.
    """
    n = hist.size
    candidates = np.arange(num_levels, n + 1, stride)
    if candidates[-1] != n:
        candidates = np.append(candidates, n)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    out = np.empty(candidates.size)
    for k, i in enumerate(candidates):
        p = hist[:i].copy()
        p[i - 1] += tail[i]
        group = (np.arange(i) * num_levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=num_levels)
        support = np.bincount(group, weights=(p > 0).astype(np.float64), minlength=num_levels)
        q = np.where(p > 0, mass[group] / np.maximum(support[group], 1.0), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            out[k] = np.inf
            continue
        p /= p_sum
        q /= q_sum
        m = p > 0
        out[k] = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
    return candidates, out


class KLObserver(_AbsHistogramObserver):
    """Entropy (KL) calibration, TensorRT-style, on the histogram of |x| with zeros in bin 0.

    The threshold ``i * bin_width`` of the candidate with the smallest KL (first on ties) is the
    clip. The number of levels is ``quant_max + 1``; when that is not below ``bins`` (int16) no
    clipping helps and the clip is the observed maximum.

    Args:
        bins: histogram bins (2048).
        stride: evaluate every ``stride``-th candidate threshold (1 = all; the last is always
            evaluated).
    """

    def __init__(self, bins: int = 2048, stride: int = 1, **kwargs: object) -> None:
        super().__init__(bins=bins, **kwargs)
        if stride < 1:
            raise ValueError(f"stride: must be >= 1, got {stride}")
        self.stride = int(stride)

    def _choose_clip(self, hist: np.ndarray, zeros: float, hist_max: float) -> float:
        levels = self.quant_max + 1
        if levels >= hist.size:
            return hist_max
        h = hist.copy()
        h[0] += zeros
        candidates, kl = kl_divergence_per_threshold(h, levels, self.stride)
        best = int(candidates[int(np.argmin(kl))])
        return best * hist_max / hist.size
