"""What the fcos NASH-E target supports, and the hardware numbers of the performance model.

This module is the single written-down description of the target that the checker, the
lowering and the performance model all read (and the README repeats). It is an *assumed*
accelerator in the spirit of Horizon's NASH-E BPU, not a description of Horizon's silicon:
fcos has no access to Horizon's toolchain, so the limits are chosen to cover FCOS-EfficientNet
/ BiFPN deploy models and to be what a fixed-function int8 conv engine plausibly supports.
Torch-free.
"""

from __future__ import annotations

import attrs

#: integer ranges of the tensor dtypes the program uses
QRANGE: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}

#: activation dtypes an op may read or write (int32 only as a raw accumulator output)
ACTIVATION_DTYPES = ("int8", "int16")


@attrs.frozen
class TargetLimits:
    """Operator limits of the target; anything outside is rejected by the checker."""

    max_channels: int = 2048  # input and output channels of any conv / feature map
    max_kernel: int = 7  # conv kernel height and width, each in 1..max_kernel
    conv_strides: tuple[int, ...] = (1, 2)
    max_padding: int = 3  # per side, and at most kernel - 1
    dilation: int = 1  # only undilated convs (the engine's line buffers have no holes)
    pool_kernels: tuple[int, ...] = (2, 3)
    pool_strides: tuple[int, ...] = (1, 2)
    upsample_factors: tuple[int, ...] = (2,)
    max_spatial: int = 4096  # height / width of any feature map
    max_batch: int = 1  # a program processes one frame; the runtime loops over a batch


@attrs.frozen
class PerfModel:
    """Numbers of the performance model (see :mod:`fcos_plugin_nash_e.perf`).

    Assumed accelerator: one conv engine of ``mac_rows x mac_cols`` int8 MACs (rows reduce
    input channels, columns produce output channels), a vector unit for element-wise work,
    on-chip SRAM holding fused intermediates, and DDR for everything else.
    """

    clock_hz: float = 1.0e9  # 1.0 GHz
    mac_rows: int = 64  # input channels reduced per cycle
    mac_cols: int = 64  # output channels produced per cycle (4096 int8 MAC/cycle, 8.2 TOPS)
    int16_mac_factor: int = 4  # an int16 operand takes 4 int8 MAC slots
    depthwise_lanes: int = 64  # depthwise: one channel per column, kernel taps serialised
    vector_bytes_per_cycle: int = 128  # element-wise unit throughput
    ddr_bytes_per_cycle: float = 32.0  # 32 GB/s at 1 GHz
    op_overhead_cycles: int = 400  # per-op launch / pipeline fill

    @property
    def macs_per_cycle(self) -> int:
        return self.mac_rows * self.mac_cols


LIMITS = TargetLimits()
PERF = PerfModel()
