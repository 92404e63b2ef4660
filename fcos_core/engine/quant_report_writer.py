"""Per-stage quantization reports (``quant_report_<stage>.json`` / ``.txt`` in the run folder).

The loops call :func:`write_stage_report` at the end of a stage whose model carries fake-quant
or integer layers; a float model is left alone. A report that cannot be made (an unusual model)
is logged and skipped: it is a diagnostic, and must never fail the stage it describes.
"""

from __future__ import annotations

from typing import Any

from fcos_core.quantization_state import get_qstate

#: image batches fed to the report; a few are enough for per-layer SQNR
REPORT_BATCHES = 2


def write_stage_report(
    loop: Any, ctx: Any, images: list[Any], float_model: Any = None
) -> str | None:
    """Write the report of ``loop.model`` on ``images`` when the model is quantized, against
    ``float_model`` (None: the model's own weights with fake-quant off)."""
    if ctx is None or getattr(ctx, "run_dir", None) is None or not images:
        return None
    if getattr(ctx, "rank", 0) != 0 or get_qstate(loop.model) not in ("calibration", "qat"):
        return None
    from fcos_core.quantization.report import write_quant_report

    try:
        path = write_quant_report(
            loop.model, images[:REPORT_BATCHES], ctx.run_dir, loop.stage, float_model
        )
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail the stage
        loop.logger.warning("quantization report skipped", stage=loop.stage, error=str(exc))
        return None
    import json

    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    layers = {layer["name"]: layer for layer in report.get("layers", [])}
    worst = ", ".join(
        f"{layers[n].get('module') or n} {float(layers[n]['local_sqnr_db']):.1f} dB"
        for n in report.get("worst", [])[:5]
        if n in layers
    )
    loop.logger.info("quantization report written", stage=loop.stage, path=path, worst_layers=worst)
    return path
