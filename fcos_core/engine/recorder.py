"""Numbers of a run, kept for ``metrics.csv`` and the PNG plots in the run folder.

One row per (kind, stage, epoch, step): ``kind`` is ``step`` (logged every few steps: loss terms
``loss_<term>``, ``loss``, ``lr``, throughput) or ``epoch`` (end of an epoch: training metric
averages ``train_<name>``, validation metrics ``val_<name>``). Values recorded for the same row
by several callbacks are merged. Columns are the union over all rows, so a stage with other
loss terms simply leaves the others empty.

Torch-free; matplotlib (Agg backend) is imported only to draw.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

_KEY_COLUMNS = ("kind", "stage", "epoch", "step")


class MetricsRecorder:
    """Collects rows in memory; :meth:`flush` writes ``metrics.csv``, :meth:`plot` the PNGs."""

    def __init__(self, run_dir: Path | str | None, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.enabled = enabled and self.run_dir is not None
        self._rows: dict[tuple[str, str, int, int], dict[str, Any]] = {}

    # -- recording --------------------------------------------------------------------------

    def log(self, kind: str, stage: str, epoch: int, step: int, **values: Any) -> None:
        """Merge ``values`` into the row (kind, stage, epoch, step)."""
        key = (kind, stage, int(epoch), int(step))
        row = self._rows.setdefault(key, {})
        for name, value in values.items():
            try:
                row[name] = float(value)
            except (TypeError, ValueError):
                continue  # only numbers go into the table

    def rows(self, kind: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (key columns included), in (stage order of appearance, step) order."""
        out = []
        for (k, s, e, st), values in self._rows.items():
            if (kind is None or k == kind) and (stage is None or s == stage):
                out.append({"kind": k, "stage": s, "epoch": e, "step": st, **values})
        return out

    def drop_after(self, stage: str, step: int) -> None:
        """Forget rows of ``stage`` past ``step`` (a resumed run records them again)."""
        for key in [k for k in self._rows if k[1] == stage and k[3] > step]:
            del self._rows[key]

    def drop_stage(self, stage: str) -> None:
        for key in [k for k in self._rows if k[1] == stage]:
            del self._rows[key]

    # -- files ------------------------------------------------------------------------------

    @property
    def csv_path(self) -> Path | None:
        return self.run_dir / "metrics.csv" if self.run_dir is not None else None

    def load(self) -> None:
        """Read an existing ``metrics.csv`` back (on resume)."""
        path = self.csv_path
        if path is None or not path.is_file():
            return
        fix = (
            "correct that value, or move the file away to run without the earlier rows "
            "(checkpoints and log.jsonl are not affected)"
        )
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    try:
                        key = (row["kind"], row["stage"], int(row["epoch"]), int(row["step"]))
                    except (KeyError, TypeError, ValueError):
                        continue
                    values = {}
                    for k, v in row.items():
                        if k in _KEY_COLUMNS or k is None or v in ("", None):
                            continue
                        try:
                            values[k] = float(v)
                        except ValueError:
                            raise FcosUserError(
                                f"{path}, line {reader.line_num}: column {k!r} holds {v[:40]!r}, "
                                "not a number, so the earlier rows cannot be read back (the "
                                "run continues its metrics.csv)",
                                hint=fix,
                            ) from None
                    self._rows.setdefault(key, {}).update(values)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FcosUserError(
                f"{path} is not a readable metrics table ({exc}), so the "
                "earlier rows cannot be read back (the run continues its "
                "metrics.csv)",
                hint=fix,
            ) from None

    def columns(self) -> list[str]:
        names: set[str] = set()
        for values in self._rows.values():
            names.update(values)
        first = [c for c in ("lr", "loss") if c in names]
        return [*_KEY_COLUMNS, *first, *sorted(names - set(first))]

    def flush(self) -> None:
        """Write ``metrics.csv`` (atomically: a reader never sees half a file)."""
        path = self.csv_path
        if not self.enabled or path is None:
            return
        cols = self.columns()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".metrics.csv.tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)

    def plot(self) -> list[Path]:
        """Draw ``loss.png``, ``lr.png`` and ``map.png`` (those with data); returns the paths."""
        if not self.enabled or self.run_dir is None:
            return []
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        made: list[Path] = []
        steps = self.rows("step")
        epochs = self.rows("epoch")
        loss_cols = sorted({c for r in steps for c in r if c.startswith("loss")})
        specs = [
            ("loss.png", "loss terms", steps, "step", loss_cols, "loss"),
            ("lr.png", "learning rate", steps, "step", ["lr"], "lr"),
            (
                "map.png",
                "validation mAP per stage",
                epochs,
                "epoch",
                sorted({c for r in epochs for c in r if c.endswith("mAP")}),
                "mAP",
            ),
        ]
        for name, title, rows, xkey, cols, ylabel in specs:
            series = _series(rows, xkey, cols)
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
            for label, (xs, ys) in series.items():
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
            ax.set_title(title)
            ax.set_xlabel(xkey)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = self.run_dir / name
            fig.savefig(path)
            plt.close(fig)
            made.append(path)
        return made


def _series(
    rows: list[dict[str, Any]], xkey: str, cols: list[str]
) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for col in cols:
        for r in rows:
            v = r.get(col)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            xs, ys = out.setdefault(f"{r['stage']}/{col}", ([], []))
            xs.append(r[xkey])
            ys.append(v)
    return out


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.7g}"
    return value
