"""The fake-quantize module fcos inserts at every quantization point of a prepared graph.

It is torchao's plain ``FakeQuantize`` idea (observer + ``torch.fake_quantize_per_*_affine``,
straight-through gradient), with three differences that the fcos flow relies on:

* the mode flags (``observer_enabled``, ``fake_quant_enabled``) are *not* in the state dict: the
  converter that built the model decides the mode, a loaded checkpoint only brings values (a
  calibration checkpoint loaded into a QAT model must not switch QAT's observers off);
* ``scale``/``zero_point`` are refreshed from the observer only when they are used or saved,
  so a calibration observer that chooses its clip from a histogram runs once per step, and a
  checkpoint never holds stale qparams;
* symmetric only (zero point 0), int8 or int16, per tensor or per output channel.

torchao's fused fake-quant is not used on purpose: in torchao 0.18 it computes slightly
different scales in training than ``convert_pt2e`` does, plain fake-quant matches exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchao.quantization.pt2e import FakeQuantizeBase


class FcosFakeQuantize(FakeQuantizeBase):
    """Observer + fake quantization of one tensor.

    Args:
        observer: observer constructor, called with ``dtype`` (and ``ch_axis`` when per channel).
        dtype: torch.int8 or torch.int16.
        ch_axis: None for per-tensor, else the channel axis (weights: 0).
        quant_min, quant_max, qscheme, is_dynamic: as torchao passes them from a
            QuantizationSpec; the observer checks them.
    """

    def __init__(
        self,
        observer: Callable[..., Any],
        dtype: torch.dtype = torch.int8,
        ch_axis: int | None = None,
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        obs_kwargs: dict[str, Any] = dict(
            dtype=dtype,
            quant_min=quant_min,
            quant_max=quant_max,
            qscheme=qscheme,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        if ch_axis is not None:
            obs_kwargs["ch_axis"] = ch_axis
        self.activation_post_process = observer(**obs_kwargs)
        obs = self.activation_post_process
        self.dtype = dtype
        self.quant_min: int = obs.quant_min
        self.quant_max: int = obs.quant_max
        self.qscheme = obs.qscheme
        self.ch_axis = -1 if ch_axis is None else int(ch_axis)
        self.is_per_channel = ch_axis is not None
        self.is_dynamic = False
        # set by prepare_body: this fake-quant reads a parameter (see _tag_weight_fake_quants)
        self.is_weight = False
        self.weight_target: str | None = None
        # mode flags: buffers (they follow .to() and DDP) but never saved or loaded
        self.register_buffer(
            "fake_quant_enabled", torch.tensor([1], dtype=torch.uint8), persistent=False
        )
        self.register_buffer(
            "observer_enabled", torch.tensor([1], dtype=torch.uint8), persistent=False
        )
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))
        self._stale = True

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The qparams fake-quant uses (``convert_pt2e`` reads these): the buffers, refreshed
        from the observer first when it saw data since the last refresh."""
        if self._stale and self.observer_enabled[0] == 1:
            self.sync_qparams()
        return self.scale.clone(), self.zero_point.clone()

    def sync_qparams(self) -> None:
        """Copy the observer's current qparams into ``scale``/``zero_point``."""
        scale, zp = self.activation_post_process.calculate_qparams()
        scale = scale.reshape(-1).to(self.scale.device)
        zp = zp.reshape(-1).to(self.zero_point.device)
        if self.scale.shape != scale.shape:
            self.scale = torch.empty_like(scale)
            self.zero_point = torch.empty_like(zp)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self._stale = False

    def has_data(self) -> bool:
        return bool(self.activation_post_process.has_data())

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """Observe (per the mode flags) and fake-quantize ``x``.

        ``observe=False`` at the second and later call sites of a fake-quant shared by
        several tensors (a max-pool or upsample output shares its input's): those values lie
        inside the range already observed at the first site, and observing them again would
        move a moving-average range several times per step, so later sites of the *same*
        forward would quantize on another grid than earlier ones.
        """
        # Activation ranges move in eval mode only while fake-quant is off (calibration runs
        # the model in eval mode to collect them). Once fake-quant is on (QAT), they move only
        # in training mode, so validating or predicting with a QAT model never changes it.
        # A weight's range is a function of the weight as it is now (no running state), so it
        # always follows: after the last optimizer step, eval quantizes the weights exactly as
        # QAT2Quantize will.
        if (
            observe
            and self.observer_enabled[0] == 1
            and (self.training or self.fake_quant_enabled[0] == 0 or self.is_weight)
        ):
            self.activation_post_process(x.detach())
            self._stale = True
        if self.fake_quant_enabled[0] == 1:
            if self._stale:
                self.sync_qparams()
            if self.is_per_channel:
                x = torch.fake_quantize_per_channel_affine(
                    x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
                )
            else:
                x = torch.fake_quantize_per_tensor_affine(
                    x, self.scale, self.zero_point, self.quant_min, self.quant_max
                )
        return x

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._stale and self.observer_enabled[0] == 1:
            self.sync_qparams()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the loaded scale is the truth until the observer sees new data
        self._stale = False

    def extra_repr(self) -> str:
        return (
            f"dtype={self.dtype}, per_channel={self.is_per_channel}, "
            f"observer={int(self.observer_enabled[0])}, "
            f"fake_quant={int(self.fake_quant_enabled[0])}"
        )
