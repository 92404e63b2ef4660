"""Range observers for symmetric quantization: min-max, percentile and the fixed input range.

Every fcos observer is a torchao ``ObserverBase`` whose *persistent* state is the same two
buffers, ``min_val`` and ``max_val`` (the clip range it chose). That is deliberate: a model
calibrated with any observer (MSE, KL, ...) and a model prepared for QAT (min-max) then have the
same state-dict keys, so a calibration checkpoint loads into a freshly converted QAT model and
the QAT observers start from the calibrated ranges. Working state that only a calibration run
needs (histograms, batch counts) is kept in non-persistent buffers.

All quantization in fcos is symmetric with zero point 0 (see docs/quantization.md):
``scale = max(|min_val|, |max_val|) / quant_max``, clamped below by ``min_scale``.
"""

from __future__ import annotations

import math

import torch
from torchao.quantization.pt2e import ObserverBase

#: integer range of each supported quantized dtype
QRANGE: dict[torch.dtype, tuple[int, int]] = {
    torch.int8: (-128, 127),
    torch.int16: (-32768, 32767),
}

#: smallest scale an observer returns; far below any int16 scale a real activation needs, and
#: not torch's float32-eps clamp, which silently coarsens int16 outputs of small range
DEFAULT_MIN_SCALE = 2.0**-32


def qrange(dtype: torch.dtype) -> tuple[int, int]:
    """(quant_min, quant_max) of a supported quantized dtype."""
    try:
        return QRANGE[dtype]
    except KeyError:
        raise ValueError(
            f"dtype: {dtype} is not supported; use torch.int8 or torch.int16"
        ) from None


class SymmetricObserver(ObserverBase):
    """Base of fcos observers: keeps ``min_val``/``max_val`` and derives a symmetric scale.

    Args:
        dtype: torch.int8 or torch.int16, the integer type of the quantized tensor.
        quant_min, quant_max: integer range; default: the full range of ``dtype``.
        min_scale: lower bound of the returned scale.
        ch_axis: channel axis of a per-channel observer; None for per-tensor.
    Extra keyword arguments that torchao passes from a QuantizationSpec (``qscheme``,
    ``is_dynamic``) are accepted and checked.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.int8,
        quant_min: int | None = None,
        quant_max: int | None = None,
        min_scale: float = DEFAULT_MIN_SCALE,
        ch_axis: int | None = None,
        qscheme: torch.qscheme | None = None,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        if is_dynamic:
            raise ValueError("is_dynamic: fcos observers are static; pass is_dynamic=False")
        lo, hi = qrange(dtype)
        self.quant_min = lo if quant_min is None else int(quant_min)
        self.quant_max = hi if quant_max is None else int(quant_max)
        if not lo <= self.quant_min < 0 < self.quant_max <= hi:
            raise ValueError(
                f"quant_min/quant_max: ({quant_min}, {quant_max}) must straddle 0 inside "
                f"{dtype}'s range ({lo}, {hi}) for symmetric quantization"
            )
        if min_scale <= 0:
            raise ValueError(f"min_scale: must be > 0, got {min_scale}")
        self.min_scale = float(min_scale)
        self.ch_axis = ch_axis
        self.qscheme = (
            torch.per_tensor_symmetric if ch_axis is None else torch.per_channel_symmetric
        )
        if qscheme is not None and qscheme not in (self.qscheme,):
            raise ValueError(f"qscheme: {qscheme} does not match {self.qscheme}")
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    # -- to override -------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Bring ``min_val``/``max_val`` up to date (lazy observers choose their clip here)."""

    # -- common ------------------------------------------------------------------------------

    def range(self) -> tuple[float, float]:
        """The current (min_val, max_val) for a per-tensor observer, brought up to date."""
        self._refresh()
        return float(self.min_val.min()), float(self.max_val.max())

    def has_data(self) -> bool:
        self._refresh()
        return bool(torch.isfinite(self.min_val).all() and torch.isfinite(self.max_val).all())

    def absmax(self) -> torch.Tensor:
        """max(|min_val|, |max_val|); 0 where nothing was observed."""
        self._refresh()
        amax = torch.maximum(self.min_val.neg(), self.max_val)
        return torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax))

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale float32, zero_point int32): ``scale = absmax / quant_max``, zero point 0."""
        scale = (self.absmax().double() / self.quant_max).clamp_min(self.min_scale).float()
        scale = scale.reshape(-1) if self.ch_axis is not None else scale.reshape(())
        return scale, torch.zeros_like(scale, dtype=torch.int32)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._refresh()  # a checkpoint holds the chosen range, never a stale one
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # per-channel buffers take the checkpoint's shape (the channel count)
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._loaded()

    def _loaded(self) -> None:
        """Called after a state dict was loaded (lazy observers drop their working state)."""

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, range=({self.min_val.tolist()}, {self.max_val.tolist()})"


class MinMaxObserver(SymmetricObserver):
    """The true minimum and maximum of everything observed (``averaging_constant=None``), or
    their exponential moving average (QAT: ``averaging_constant`` = 0.01 by default in fcos).

    Args:
        averaging_constant: None for the running min/max; else the weight ``c`` of the new
            batch in ``v <- v + c * (batch_v - v)``. The first batch (or a range loaded from a
            calibration checkpoint) initialises the average.
    """

    def __init__(self, averaging_constant: float | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise ValueError(
                f"averaging_constant: must be in (0, 1] or None, got {averaging_constant}"
            )
        self.averaging_constant = averaging_constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        lo, hi = torch.aminmax(x.detach().float())
        if self.averaging_constant is None or not bool(torch.isfinite(self.min_val)):
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            c = self.averaging_constant
            self.min_val.add_(c * (lo - self.min_val))
            self.max_val.add_(c * (hi - self.max_val))
        return x


class PerChannelAbsMaxObserver(SymmetricObserver):
    """Weights: per-output-channel min and max of the tensor seen *last*.

    Weights change every optimizer step, so their range is not accumulated: every forward
    replaces it, and the quantized weight always matches the current float weight.
    """

    def __init__(self, ch_axis: int = 0, **kwargs: object) -> None:
        super().__init__(ch_axis=ch_axis, **kwargs)  # type: ignore[arg-type]
        self.min_val = torch.empty(0)
        self.max_val = torch.empty(0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w2 = w.detach().float().transpose(0, self.ch_axis).flatten(1)  # type: ignore[arg-type]
        lo, hi = torch.aminmax(w2, dim=1)
        if self.min_val.shape != lo.shape:
            self.min_val = torch.empty_like(lo)
            self.max_val = torch.empty_like(hi)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        return w


class FixedRangeObserver(SymmetricObserver):
    """A range fixed in advance (the normalised image: scale 1/128, never observed).

    Args:
        scale: the fixed scale; the stored range is ``[-scale*quant_max, scale*quant_max]``.
    """

    def __init__(self, scale: float = 1.0 / 128.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not scale > 0:
            raise ValueError(f"scale: must be > 0, got {scale}")
        self.fixed_scale = float(scale)
        amax = self.fixed_scale * self.quant_max
        self.min_val.fill_(-amax)
        self.max_val.fill_(amax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        # exact: not recomputed from the range, so 1/128 stays 1/128 in float32
        return torch.tensor(self.fixed_scale), torch.tensor(0, dtype=torch.int32)


def _percentile_sorted(values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy.percentile's default ('linear') interpolation on a 1-D tensor, in float64."""
    n = values.numel()
    pos = (q / 100.0) * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    m = n - lo  # sorted ascending, a[lo] is the m-th largest value
    if m <= 4096:
        # calibration percentiles are high: the few largest values are all that is needed,
        # and topk on them is an order of magnitude faster than two kthvalue selections
        top = torch.topk(values, m, sorted=True).values
        v_lo = top[m - 1].double()
        v_hi = top[m - 2].double() if hi != lo else v_lo
    else:
        # kthvalue is 1-based and avoids sorting the whole tensor
        v_lo = torch.kthvalue(values, lo + 1).values.double()
        v_hi = torch.kthvalue(values, hi + 1).values.double() if hi != lo else v_lo
    return v_lo + (v_hi - v_lo) * frac


class PercentileObserver(SymmetricObserver):
    """Clip at the ``percentile``-th percentile of |x| (numpy's linear interpolation).

    The percentile is computed exactly per batch; over several batches the clip is the mean of
    the per-batch percentiles (a percentile over all data would need every value kept).

    Args:
        percentile: in (0, 100]; 99.99 by default.
    """

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile: must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.int64), persistent=False)
        self.register_buffer("clip_sum", torch.tensor(0.0, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        clip = _percentile_sorted(x.detach().abs().flatten().float(), self.percentile)
        self.clip_sum += clip
        self.num_batches += 1
        mean = (self.clip_sum / self.num_batches).float()
        self.min_val.copy_(-mean)
        self.max_val.copy_(mean)
        return x

    def _loaded(self) -> None:
        self.num_batches.zero_()
        self.clip_sum.zero_()
