"""Integer kernels of the runtime: the exact arithmetic of every op kind (numpy, torch-free).

Exactness. Activations and weights are integers; a conv accumulates products of an int8/int16
activation (after its zero point is subtracted, |x| <= 2^16) and an int8 weight (|w| <= 2^7).
Each product is below 2^23 in magnitude and a dot product has at most
``K = C_in/groups * kh * kw <= 2048 * 49 < 2^17`` terms, so every partial sum is an integer
below 2^40 < 2^53. A float64 number represents every integer below 2^53 exactly, and the sum or
product of two such integers is exact whenever the result is below 2^53, so a float64 matmul
(BLAS, any summation order) returns the exact integer dot product. The result is converted to
int64, and all requantization runs in int64. The compiler checks for every conv that the
worst-case accumulator times its multiplier stays below 2^63 (``acc_bound`` in the lowering),
so ``acc * M`` never wraps.

Requantization ("integer multiplier and shift", per output channel)::

    y = clamp(((acc * M) + 2^(n-1)) >> n + zp_out, qmin, qmax)     (n >= 1; n = 0: acc * M)

``>>`` is an arithmetic (floor) shift, so ties round towards +infinity.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fcos_plugin_nash_e.target import QRANGE


def saturate(x: np.ndarray, dtype: str) -> np.ndarray:
    """Clamp an int64 array to ``dtype``'s range and cast."""
    lo, hi = QRANGE[dtype]
    return np.clip(x, lo, hi).astype(dtype)


def round_shift(prod: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``(prod + 2^(n-1)) >> n`` elementwise in int64 (``n = 0``: ``prod``)."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(prod + half, shift)


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    zero_point: int,
    out_dtype: str,
    relu: bool = False,
) -> np.ndarray:
    """Per-channel requantization of an NCHW int64 accumulator (see the module docstring).

    ``multiplier`` / ``shift`` have one entry per channel (axis 1) or a single entry.
    """
    acc = acc.astype(np.int64, copy=False)
    m = multiplier.astype(np.int64).reshape(1, -1, 1, 1)
    s = shift.astype(np.int64).reshape(1, -1, 1, 1)
    y = round_shift(acc * m, s) + zero_point
    lo, hi = QRANGE[out_dtype]
    if relu:
        lo = max(lo, zero_point)
    return np.clip(y, lo, hi).astype(out_dtype)


def _pad(x: np.ndarray, pad: tuple[int, int, int, int], value: float | int) -> np.ndarray:
    t, left, b, r = pad
    if not any(pad):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


def conv2d_acc(
    x: np.ndarray,
    in_zp: int,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    groups: int,
) -> np.ndarray:
    """Exact int64 accumulator ``sum((x - in_zp) * w) + bias`` of an NCHW conv.

    Padding is with the input zero point (real value 0). Dense convs use im2col and a float64
    matmul, depthwise convs accumulate one kernel tap at a time; both are exact (see the
    module docstring).
    """
    n, c, _h, _w = x.shape
    o, ipg, kh, kw = weight.shape
    sh, sw = stride
    xf = _pad(x.astype(np.float64) - float(in_zp), pad, 0.0)
    oh = (xf.shape[2] - kh) // sh + 1
    ow = (xf.shape[3] - kw) // sw + 1
    wf = weight.astype(np.float64)
    out = np.empty((n, o, oh, ow), dtype=np.float64)
    if groups == c and ipg == 1 and o == c:
        # depthwise: per tap, a strided view of the input times one weight per channel
        out[:] = 0.0
        for i in range(kh):
            for j in range(kw):
                tap = xf[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
                out += tap * wf[:, 0, i, j].reshape(1, c, 1, 1)
    else:
        opg = o // groups
        for b in range(n):
            for g in range(groups):
                xg = xf[b, g * ipg : (g + 1) * ipg]
                wg = wf[g * opg : (g + 1) * opg].reshape(opg, ipg * kh * kw)
                if kh == 1 and kw == 1:
                    cols = xg[:, ::sh, ::sw][:, :oh, :ow].reshape(ipg, oh * ow)
                else:
                    win = sliding_window_view(xg, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :oh, :ow]
                    # [ipg, oh, ow, kh, kw] -> [ipg, kh, kw, oh*ow]
                    cols = np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2)).reshape(
                        ipg * kh * kw, oh * ow
                    )
                out[b, g * opg : (g + 1) * opg] = (wg @ cols).reshape(opg, oh, ow)
    acc = np.rint(out).astype(np.int64)  # exact integers already; rint guards -0.0 only
    return acc + bias.astype(np.int64).reshape(1, -1, 1, 1)


def add(
    a: np.ndarray,
    b: np.ndarray,
    a_zp: int,
    b_zp: int,
    a_mult: int,
    b_mult: int,
    shift: int,
    out_zp: int,
    out_dtype: str,
    relu: bool,
) -> np.ndarray:
    """``clamp(((a - za) * Ma + (b - zb) * Mb + 2^(n-1)) >> n + zo)``: each input rescaled
    to the output scale by its own multiplier, one rounding."""
    acc = (a.astype(np.int64) - a_zp) * a_mult + (b.astype(np.int64) - b_zp) * b_mult
    y = round_shift(acc, shift) + out_zp
    lo, hi = QRANGE[out_dtype]
    if relu:
        lo = max(lo, out_zp)
    return np.clip(y, lo, hi).astype(out_dtype)


def relu(x: np.ndarray, zero_point: int) -> np.ndarray:
    """Integer ReLU: values below the zero point (real value < 0) become the zero point."""
    return np.maximum(x, np.array(zero_point, dtype=x.dtype))


def maxpool2d(
    x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]
) -> np.ndarray:
    """Max over windows; padding never wins (it is the dtype's minimum)."""
    lo = QRANGE[str(x.dtype)][0] if str(x.dtype) in QRANGE else np.iinfo(x.dtype).min
    xp = _pad(x, pad, lo)
    kh, kw = kernel
    sh, sw = stride
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            out = tap.copy() if out is None else np.maximum(out, tap)
    return out


def upsample_nearest(x: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor (each pixel repeated)."""
    return np.repeat(np.repeat(x, factor, axis=2), factor, axis=3)


def reduce_max_channels(x: np.ndarray) -> np.ndarray:
    """Max over the channel axis, keeping it: ``[N, C, H, W] -> [N, 1, H, W]``."""
    return x.max(axis=1, keepdims=True)


def quantize(x: np.ndarray, scale: float, zero_point: int, out_dtype: str) -> np.ndarray:
    """``clamp(round_half_even(x * float32(1 / float32(scale))) + zp)``, all in float32.

    The float32 reciprocal times the float32 input, rounded half to even, is what torch's
    ``quantize_per_tensor`` and the fcos integer model compute (IEEE float32 division and
    multiplication are correctly rounded, so numpy gives the same bits).
    """
    inv = np.float32(1.0) / np.float32(scale)
    q = np.rint(x.astype(np.float32) * inv).astype(np.int64) + zero_point
    return saturate(q, out_dtype)


def dequantize(q: np.ndarray, scale: np.ndarray | float, zero_point: int) -> np.ndarray:
    """``float32((q - zp) * scale)``: the product in float64 (exact for int16 codes and a
    float32 scale), rounded once to float32; ``scale`` per tensor or per channel (axis 1)."""
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 1:
        s = s.reshape(1, -1, 1, 1)
    return ((q.astype(np.int64) - zero_point).astype(np.float64) * s).astype(np.float32)
