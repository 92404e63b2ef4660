"""Per-class results of an evaluation: collected from the metrics, logged as a table, and kept
in ``summary.json``.

A metric that can break its numbers down by class has a ``per_class()`` method (called after
``compute()``) returning one dict per class: ``name``, ``category_id`` and its numbers -- for
COCODetectionMetric ``AP`` (IoU .50:.95), ``AP50``, ``AR100`` (None: no ground truth of that
class) and ``gt_boxes``. The ``Validation`` callback logs the table of the stage's last
validation when the stage ends, the ``Predictor`` the table of its evaluation; either goes to
the stage's ``summary.json`` entry as ``"per_class"`` (the predictor's when both ran, as for
the stage's ``metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: the columns shown, in order, when a row has them (others are kept in summary.json only)
COLUMNS = ("AP", "AP50", "AR100", "gt_boxes")


def collect(metrics: Sequence[Any]) -> list[dict[str, Any]]:
    """The per-class rows of the first metric that has them (empty when none has: a metric
    without ``per_class``, or a rank other than 0 of a distributed evaluation)."""
    for metric in metrics:
        per_class = getattr(metric, "per_class", None)
        if callable(per_class):
            rows = per_class()
            if rows:
                return [dict(r) for r in rows]
    return []


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table: class, id, AP, AP50, AR100, gt boxes (``-``: no
    ground truth of that class)."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    head = ("class", "id", *(c.replace("gt_boxes", "gt boxes") for c in cols))
    body = [
        (
            str(r.get("name", r.get("category_id", "?"))),
            _cell(r.get("category_id")),
            *(_cell(r.get(c)) for c in cols),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))
        ).rstrip()
        for x in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(ctx: Any, logger: Any, stage: str, rows: Sequence[dict[str, Any]], source: str) -> None:
    """Log the table and put the rows into the stage's summary entry (``ctx.summary_extra``)."""
    if not rows:
        return
    logger.info("per-class results", stage=stage, source=source, table="\n" + format_table(rows))
    if ctx is not None and getattr(ctx, "summary_extra", None) is not None:
        ctx.summary_extra["per_class"] = [dict(r) for r in rows]
