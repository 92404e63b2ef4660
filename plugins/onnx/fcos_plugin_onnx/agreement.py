"""Integer-code agreement between ONNX Runtime and the fcos quantized model.

Float outputs are compared in *quantization steps*, not as floats: an int16 logit whose step
is 1e-4 and an int8 feature whose step is 0.02 both count a difference of one code as 1. Each
output is turned back into its integer codes (``round(x / scale)`` for dequantized outputs,
``raw - zero_point`` for integer ones) and the report gives, per output and overall, the
fraction of elements that are equal, within 1 step and within 2 steps, and the largest gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def to_codes(value: Any, scale: Sequence[float], zero_point: int = 0) -> np.ndarray:
    """Integer codes (int64) of an output: integer arrays minus ``zero_point``; float arrays
    divided by their per-tensor (``[s]``) or per-channel (``[s_c]``, dim 1) scale and rounded."""
    arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64) - int(zero_point)
    s = np.asarray(scale, dtype=np.float64)
    if s.size > 1:
        s = s.reshape(1, -1, *([1] * (arr.ndim - 2)))
    return np.rint(arr.astype(np.float64) / s).astype(np.int64)


def code_agreement(reference: Sequence[Any], candidate: Sequence[Any],
                   specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Compare two output tuples element by element in quantization steps.

    Args:
        reference: the fcos quantized model's outputs (codes with zero point 0, or floats).
        candidate: ONNX Runtime's outputs, same order.
        specs: per output ``name``, ``scale`` (list), ``zero_point`` (of the candidate), as in
            the artifact metadata. An output without a scale (a max over per-channel int32
            scales) cannot be put in steps and is listed as not compared.
    """
    if len(reference) != len(candidate) or len(candidate) != len(specs):
        raise ValueError(f"output counts differ: reference {len(reference)}, candidate "
                         f"{len(candidate)}, specs {len(specs)}")
    per: list[dict[str, Any]] = []
    total = eq = w1 = w2 = 0
    worst = 0
    for ref, cand, spec in zip(reference, candidate, specs):
        name = str(spec["name"])
        if not spec.get("scale"):
            per.append({"name": name, "compared": False})
            continue
        a = to_codes(ref, spec["scale"], 0)
        b = to_codes(cand, spec["scale"], int(spec.get("zero_point", 0)))
        if a.shape != b.shape:
            raise ValueError(f"output {name}: shapes differ, {a.shape} vs {b.shape}")
        d = np.abs(a - b)
        n = int(d.size)
        e0, e1, e2 = int((d == 0).sum()), int((d <= 1).sum()), int((d <= 2).sum())
        m = int(d.max()) if n else 0
        per.append({"name": name, "compared": True, "elements": n,
                    "within_0": e0 / n if n else 1.0, "within_1": e1 / n if n else 1.0,
                    "within_2": e2 / n if n else 1.0, "max_steps": m})
        total, eq, w1, w2, worst = total + n, eq + e0, w1 + e1, w2 + e2, max(worst, m)
    return {
        "elements": total,
        "within_0": eq / total if total else 1.0,
        "within_1": w1 / total if total else 1.0,
        "within_2": w2 / total if total else 1.0,
        "max_steps": worst,
        "per_output": per,
    }
