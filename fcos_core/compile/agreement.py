"""Integer-code agreement between a compiled artifact's runtime and the fcos integer model.

Outputs are compared in *quantization steps*, not as floats: an int16 logit whose step is 1e-4
and an int8 feature whose step is 0.02 both count a difference of one code as 1. Each output is
turned back into its integer codes (``round(x / scale)`` for dequantized float outputs,
``raw - zero_point`` for integer ones) and the result gives, per output and overall, the
fraction of elements that are equal, within 1 step and within 2 steps, and the largest gap.

The rule every backend is held to (:func:`disagreement`): at least :data:`AGREEMENT_WITHIN_1` of
the compared codes within one step of the integer model's. Torch-free (numpy only); torch
tensors are accepted and read through ``.detach().cpu().numpy()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: the least fraction of output codes within one step of the integer model's (0.1 % may differ)
AGREEMENT_WITHIN_1 = 0.999


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


class AgreementTally:
    """Exact running counts of :func:`code_agreement` over many samples (images, batches).

    Args:
        specs: per output ``name``, ``scale`` (list; empty or missing: the output cannot be put
            in steps, e.g. a max over per-channel int32 scales, and is listed as not compared)
            and ``zero_point`` (of the candidate's integer outputs; default 0).
    """

    def __init__(self, specs: Sequence[Mapping[str, Any]]) -> None:
        self.specs = [dict(s) for s in specs]
        # per output: elements, equal, within 1, within 2, largest gap
        self._counts = [[0, 0, 0, 0, 0] for _ in self.specs]
        self.samples = 0

    def add(self, reference: Sequence[Any], candidate: Sequence[Any]) -> None:
        """Count one sample: ``reference`` (the integer model's outputs, codes with zero point
        0 or dequantized floats) against ``candidate`` (the runtime's), same order."""
        if len(reference) != len(candidate) or len(candidate) != len(self.specs):
            raise ValueError(
                f"output counts differ: reference {len(reference)}, candidate "
                f"{len(candidate)}, specs {len(self.specs)}"
            )
        for ref, cand, spec, c in zip(reference, candidate, self.specs, self._counts):
            if not spec.get("scale"):
                continue
            a = to_codes(ref, spec["scale"], 0)
            b = to_codes(cand, spec["scale"], int(spec.get("zero_point", 0)))
            if a.shape != b.shape:
                raise ValueError(f"output {spec['name']}: shapes differ, {a.shape} vs {b.shape}")
            d = np.abs(a - b)
            c[0] += int(d.size)
            c[1] += int((d == 0).sum())
            c[2] += int((d <= 1).sum())
            c[3] += int((d <= 2).sum())
            c[4] = max(c[4], int(d.max()) if d.size else 0)
        self.samples += 1

    def result(self) -> dict[str, Any]:
        """``{elements, within_0, within_1, within_2, max_steps, worst_output, per_output}``;
        ``worst_output`` is the output with the fewest codes within one step (then the fewest
        equal, then the largest gap), None when every compared code is equal."""
        per: list[dict[str, Any]] = []
        tot = [0, 0, 0, 0, 0]
        for spec, (n, e0, e1, e2, m) in zip(self.specs, self._counts):
            name = str(spec["name"])
            if not spec.get("scale"):
                per.append({"name": name, "compared": False})
                continue
            per.append(
                {
                    "name": name,
                    "compared": True,
                    "elements": n,
                    "within_0": e0 / n if n else 1.0,
                    "within_1": e1 / n if n else 1.0,
                    "within_2": e2 / n if n else 1.0,
                    "max_steps": m,
                }
            )
            tot = [tot[0] + n, tot[1] + e0, tot[2] + e1, tot[3] + e2, max(tot[4], m)]
        n = tot[0]
        differing = [p for p in per if p["compared"] and p["max_steps"] > 0]
        worst = min(
            differing, key=lambda p: (p["within_1"], p["within_0"], -p["max_steps"]), default=None
        )
        return {
            "elements": n,
            "within_0": tot[1] / n if n else 1.0,
            "within_1": tot[2] / n if n else 1.0,
            "within_2": tot[3] / n if n else 1.0,
            "max_steps": tot[4],
            "worst_output": worst["name"] if worst is not None else None,
            "per_output": per,
        }


def code_agreement(
    reference: Sequence[Any], candidate: Sequence[Any], specs: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Compare two output tuples element by element in quantization steps (one sample of
    :class:`AgreementTally`; see there for ``specs`` and the result)."""
    tally = AgreementTally(specs)
    tally.add(reference, candidate)
    return tally.result()


def disagreement(agreement: Mapping[str, Any] | None) -> str | None:
    """None when at least :data:`AGREEMENT_WITHIN_1` of the codes are within one step of the
    integer model's (or nothing was compared); else what is wrong, naming the worst outputs."""
    if (
        not agreement
        or not agreement.get("elements")
        or agreement["within_1"] >= AGREEMENT_WITHIN_1
    ):
        return None
    bad = sorted(
        (
            p
            for p in agreement["per_output"]
            if p.get("compared") and p["within_1"] < AGREEMENT_WITHIN_1
        ),
        key=lambda p: p["within_1"],
    )
    names = ", ".join(f"{p['name']} {p['within_1']:.2%} (max {p['max_steps']})" for p in bad[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    return (
        f"{agreement['within_1']:.2%} of {agreement['elements']} output codes within one "
        f"step (needs {AGREEMENT_WITHIN_1:.1%}), largest gap {agreement['max_steps']} "
        f"steps; outputs: {names}{more}"
    )
