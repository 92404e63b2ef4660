"""The run's summary: ``summary.json`` and the table printed at the end of ``fcos run``.

``summary.json`` maps each stage run so far to ``{"metrics": {...}, "seconds": float,
"checkpoint": path or null, "source": "predictor" | "validation" | null}``; ``metrics`` holds the
12 COCO numbers (``mAP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``,
``AR100``, ``ARs``, ``ARm``, ``ARl``) when the stage was evaluated with COCODetectionMetric.
A trained stage also has ``"nonfinite_grad_steps"``: its optimizer steps skipped for a NaN or
infinite gradient (see :mod:`fcos_core.engine.trainer`), and, when its trainer has the
``TrainingHealth`` callback, ``"health_warnings"``: a list of ``{"kind": "plateau" | "jump",
"term", "stage", "epoch", "step", "message", ...}`` (empty when training looked healthy).
A stage scored with a metric that breaks its numbers down by class (COCODetectionMetric) has
``"per_class"``: ``[{"category_id", "name", "AP", "AP50", "AR100", "gt_boxes"}, ...]`` (AP
None: no ground truth of that class), from the same evaluation as its ``metrics`` (see
:mod:`fcos_core.engine.per_class`).
A stage whose trainer has the ``EarlyStopping`` callback has ``"early_stopping"``: ``{"monitor",
"mode", "best", "best_epoch", "stopped_epoch" (null: all epochs ran), "patience", "min_delta"}``.
Stages run later (another ``fcos run --stage X``) are merged into the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COCO_KEYS = (
    "mAP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
MAX_SUMMARY_BYTES = 1 << 20


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file() or path.stat().st_size > MAX_SUMMARY_BYTES:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    from fcos_core.atomic_write import write_atomically

    text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
    # a unique temp name (not a fixed .summary.json.tmp that two writers would share)
    return write_atomically(Path(run_dir) / "summary.json", lambda f: f.write(text.encode("utf-8")))


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_table(summary: dict[str, Any], order: tuple[str, ...] = ()) -> str:
    """A plain-text table: stage, mAP, time, checkpoint."""
    stages = [s for s in order if s in summary] + [s for s in summary if s not in order]
    rows = [("stage", "mAP", "time", "checkpoint")]
    for stage in stages:
        entry = summary[stage]
        m = (entry.get("metrics") or {}).get("mAP")
        rows.append(
            (
                stage,
                "-" if m is None else f"{m:.4f}",
                fmt_seconds(entry.get("seconds")),
                str(entry.get("checkpoint") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
