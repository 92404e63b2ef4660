"""fcos-core's built-in quantization components, registered through the public hooks.

Torch-free: factories are import strings; schemas live in :mod:`fcos_core.quantization.schemas`.
"""

from __future__ import annotations

from fcos_core.hooks import hookimpl
from fcos_core.quantization import schemas as s

_Q = "fcos_core.quantization"


@hookimpl
def register_converters(register):
    register(
        "Float2Calibration",
        factory=f"{_Q}.converters:Float2Calibration",
        schema=s.Float2CalibrationArgs,
    )
    register("Float2QAT", factory=f"{_Q}.converters:Float2QAT", schema=s.Float2QATArgs)
    register("QAT2Quantize", factory=f"{_Q}.converters:QAT2Quantize", schema=s.QAT2QuantizeArgs)


@hookimpl
def register_observers(register):
    register("minmax", factory=f"{_Q}.observers:MinMaxObserver", schema=s.MinMaxObserverArgs)
    register(
        "percentile", factory=f"{_Q}.observers:PercentileObserver", schema=s.PercentileObserverArgs
    )
    register("mse", factory=f"{_Q}.histogram_observers:MSEObserver", schema=s.MSEObserverArgs)
    register("kl", factory=f"{_Q}.histogram_observers:KLObserver", schema=s.KLObserverArgs)
