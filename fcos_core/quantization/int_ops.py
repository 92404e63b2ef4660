"""The fcos integer operations: the exact semantics a compile backend must reproduce.

Every function takes and returns integer tensors (int8/int16 activations, int8 weights, int32
biases, int64 multipliers and shifts) except :func:`quantize` (float in) and
:func:`dequantize` (float out). Where a torch kernel has no integer version (conv, max-pool,
upsample) the values are carried in a float type that holds them exactly: conv runs in float64,
whose 53-bit mantissa holds every partial sum of int8 x int8 (or int16 x int8) products for any
conv fcos builds, so the result is the exact integer accumulator; in eager mode it runs in
float32 when the bound ``max|x| * max_c sum|w[c]| <= 2**24`` shows that float32 holds every
partial sum too (several times faster). The formulas are written out
in docs/quantization.md ("Integer semantics").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(
    real: torch.Tensor, bits: int = 31, max_shift: int = 62
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer multiplier and right shift with ``real ~= M * 2**-n``.

    ``M`` has ``bits`` significant bits (``2**(bits-1) <= M < 2**bits``) and ``1 <= n <=
    max_shift``; when ``real`` is so small that ``n`` would exceed ``max_shift``, ``n =
    max_shift`` and ``M = round(real * 2**max_shift)`` (fewer significant bits, possibly 0).

    Args:
        real: float64 tensor of positive ratios (e.g. ``s_in * s_w[c] / s_out``), any shape.
    Returns:
        (M, n) int64 tensors of ``real``'s shape.
    """
    real = real.double()
    if bool((real <= 0).any()) or not bool(torch.isfinite(real).all()):
        raise ValueError(f"requantization ratio must be finite and > 0, got {real.tolist()}")
    mant, exp = torch.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    m = torch.round(mant * 2.0**bits).long()
    n = bits - exp.long()
    carry = m == 2**bits  # mantissa rounded up to the next power of two
    m = torch.where(carry, m // 2, m)
    n = torch.where(carry, n - 1, n)
    small = n > max_shift
    if bool(small.any()):
        m = torch.where(small, torch.round(real * 2.0**max_shift).long(), m)
        n = torch.where(small, torch.full_like(n, max_shift), n)
    if bool((n < 1).any()):
        raise ValueError(
            f"requantization ratio {real.max().item():.6g} is too large for a {bits}-bit "
            "multiplier with a right shift >= 1 (the output scale is far below the input scale)"
        )
    return m, n


def round_shift(v: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``floor((v + 2**(n-1)) / 2**n)``: divide by ``2**n`` rounding half up (toward +inf).

    ``v`` int64; ``shift`` int64 broadcastable to ``v`` with ``1 <= n <= 62``.
    """
    offset = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    return torch.bitwise_right_shift(v + offset, shift)  # arithmetic shift = floor


def saturate(v: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype) -> torch.Tensor:
    return v.clamp(qmin, qmax).to(dtype)


def _channel_view(t: torch.Tensor) -> torch.Tensor:
    """[C] -> [1, C, 1, 1]; a scalar stays a scalar."""
    return t.reshape(1, -1, 1, 1) if t.dim() == 1 else t


def quantize(
    x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype
) -> torch.Tensor:
    """Float -> int: ``clamp(round_half_even(x * float32(1 / s)), qmin, qmax)``.

    The product is computed in float32 with the float32 reciprocal of the scale, as torch's
    ``quantize_per_tensor`` and fake-quant do.
    """
    inv = torch.reciprocal(scale.float())
    return saturate(torch.round(x.float() * inv), qmin, qmax, dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Int -> float32: ``float32(q * s)``, the exact product rounded once (per-tensor ``s``
    or per-channel ``s[c]`` on dim 1)."""
    return (q.double() * _channel_view(scale.double())).float()


_FLOAT32_EXACT = 2**24  # every integer of magnitude <= 2**24 is a float32


def _float32_holds_partial_sums(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``max|x| * max_c sum|w[c]| <= 2**24``: every partial sum of the conv is an integer
    float32 represents exactly, in any summation order. Eager only: under tracing, scripting
    or compiling the answer would be baked into the graph for one input, so those take
    float64."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if x.numel() == 0 or weight.numel() == 0:
        return True
    x_max = max(abs(int(x.min())), abs(int(x.max())))
    w_sum = int(weight.to(torch.int64).abs().flatten(1).sum(1).max())
    return x_max * w_sum <= _FLOAT32_EXACT


def conv2d_acc(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """Exact integer accumulator of a (grouped / depthwise) conv, zero padding, as int64.

    ``acc[n, c, y, x] = bias[c] + sum_{k, i, j} x[n, g(c)*Cin_g + k, y*sy + i*dy - py,
    x*sx + j*dx - px] * w[c, k, i, j]`` (out-of-image input = 0). ``x`` holds integers (an
    integer dtype, or a float one with integer values); ``weight`` integers.
    """
    dtype = torch.float32 if _float32_holds_partial_sums(x, weight) else torch.float64
    if dtype == torch.float32 and x.is_cuda and torch.backends.cudnn.allow_tf32:
        # TF32 keeps 10 mantissa bits of each input: an int16 activation would be rounded
        from fcos_core.quantization.exact_float import require_exact_float32

        require_exact_float32("int_ops.conv2d_acc on CUDA")
    acc = F.conv2d(
        x.to(dtype), weight.to(dtype), None, list(stride), list(padding), list(dilation), groups
    )
    acc = acc.long()  # exact: every value is an integer the float type holds
    if bias is not None:
        acc = acc + _channel_view(bias.long())
    return acc


def requantize(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    dtype: torch.dtype,
    relu: bool = False,
) -> torch.Tensor:
    """``sat(round_half_up(acc * M[c] / 2**n[c]))``; with ``relu`` the lower bound is 0.

    ``acc`` int (any of int8..int64); ``M``, ``n`` int64 per tensor or per channel (dim 1).
    """
    v = round_shift(acc.long() * _channel_view(multiplier), _channel_view(shift))
    return saturate(v, 0 if relu else qmin, qmax, dtype)


def add(
    a: torch.Tensor,
    b: torch.Tensor,
    mult_a: torch.Tensor,
    mult_b: torch.Tensor,
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    dtype: torch.dtype,
    relu: bool = False,
) -> torch.Tensor:
    """``sat(round_half_up((a * Ma + b * Mb) / 2**n))``: one rounding for the sum."""
    v = round_shift(a.long() * mult_a + b.long() * mult_b, shift)
    return saturate(v, 0 if relu else qmin, qmax, dtype)


def add_multipliers(
    ratio_a: torch.Tensor, ratio_b: torch.Tensor, bits: int = 31, max_shift: int = 62
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Ma, Mb, n)`` of an integer add with ``ratio_x = s_x / s_out`` (float64 scalars).

    One shift for both inputs: the larger ratio gets the full ``bits``-bit multiplier (see
    :func:`quantize_multiplier`), the other ``round(ratio * 2**n)``.
    """
    ra, rb = ratio_a.double(), ratio_b.double()
    _, n = quantize_multiplier(torch.maximum(ra, rb), bits, max_shift)
    ma = torch.round(ra * 2.0 ** n.double()).long()
    mb = torch.round(rb * 2.0 ** n.double()).long()
    return ma, mb, n


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` in the integer domain (same scale)."""
    return x.clamp_min(0)


def max_pool2d(
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> torch.Tensor:
    """Max over each window (padding never wins: it is -inf); same scale and dtype."""
    y = F.max_pool2d(
        x.float(), list(kernel_size), list(stride), list(padding), list(dilation), ceil_mode
    )
    return y.to(x.dtype)


def upsample_nearest2d(
    x: torch.Tensor, output_size: Sequence[int] | None, scale_factors: Sequence[float] | None
) -> torch.Tensor:
    """Nearest-neighbour resize (torch's index rule; for an integer factor f,
    ``out[y, x] = in[y // f, x // f]``); same scale and dtype."""
    y = torch.ops.aten.upsample_nearest2d.vec(
        x.float(),
        None if output_size is None else list(output_size),
        None if scale_factors is None else list(scale_factors),
    )
    return y.to(x.dtype)


def cat(xs: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Concatenation of tensors that share one scale and dtype."""
    return torch.cat(list(xs), dim)


def quantize_bias(bias: torch.Tensor, acc_scale: torch.Tensor) -> torch.Tensor:
    """int32 bias ``sat_int32(round_half_even(b / (s_in * s_w[c])))`` computed in float64."""
    q = torch.round(bias.double() / acc_scale.double())
    return q.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def acc_bound(weight_q: torch.Tensor, in_qmax: int, bias_q: torch.Tensor | None) -> int:
    """Worst-case |accumulator| of a conv: ``max_c sum |w[c]| * max|x| + |b[c]|``."""
    per_c = weight_q.abs().long().flatten(1).sum(1) * (in_qmax + 1)
    if bias_q is not None:
        per_c = per_c + bias_q.abs().long()
    return int(per_c.max()) if per_c.numel() else 0
