"""No TF32 where the quantized paths compute integers with float convolutions.

On NVIDIA GPUs since Ampere, torch may run float32 convolutions (cuDNN, on by default) and
matrix products (cuBLAS, when allowed) in TF32, which keeps 10 mantissa bits of each input. The
integer-exact paths need every float32 product to be exact: the exact accumulator of
:func:`~fcos_core.quantization.int_ops.conv2d_acc` holds int8/int16 values in float32 (an
int16 input has 16 significant bits, so TF32 rounds it), and the fake-quant graph of
calibration and QAT is matched to the integer model bit for bit. So calibration, QAT and the
integer model turn TF32 off for the whole process (:func:`require_exact_float32`); float
training before them keeps whatever the user chose. On CPU the flags change nothing.
"""

from __future__ import annotations

from fcos_core.logging_setup import get_logger

_logged = False


def tf32_enabled() -> bool:
    """Whether cuBLAS matmuls or cuDNN convolutions may use TF32 now."""
    import torch

    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def require_exact_float32(reason: str) -> bool:
    """Turn TF32 off for cuBLAS and cuDNN (process-wide); True when it was on.

    ``reason`` names the path that needs it (logged once, the first time a flag changes).
    """
    import torch

    was_on = tf32_enabled()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    global _logged
    if was_on and not _logged and torch.cuda.is_available():
        _logged = True
        get_logger("fcos.quantization").info(
            "TF32 turned off (cuBLAS and cuDNN): the quantized paths compute integers with "
            "float32 convolutions and must be exact",
            reason=reason,
        )
    return was_on
