"""``fcos runs``: several run folders' ``summary.json`` stage tables side by side.

One column per run, one row per stage and metric (``--metrics``, default ``mAP``), plus each
stage's time and, when its trainer had ``EarlyStopping``, the epoch it stopped at. Without
folders it compares every ``runs/*`` folder that has a ``summary.json``. The best value of each
metric row is marked with ``*`` (``AR``/``AP`` keys: larger is better).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

#: ``fcos runs`` without folders looks here
DEFAULT_ROOT = Path("runs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run folders (each with a summary.json); default: every runs/* that has one",
    )
    p.add_argument(
        "--metrics",
        default="mAP",
        help="comma-separated summary metrics to compare, e.g. mAP,AP50,AR100 (default: mAP)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print {run: {stage: {metric: value, seconds, early_stopping}}}",
    )


def _read_summary(folder: Path) -> dict[str, Any]:
    """The folder's summary.json; a clear error when it is missing or damaged."""
    from fcos_core.engine.summary import MAX_SUMMARY_BYTES

    path = folder / "summary.json"
    if not folder.is_dir():
        raise FcosUserError(
            f"run folder {str(folder)!r} does not exist",
            hint="pass folders written by `fcos run` (runs/<task_name>)",
        )
    if not path.is_file():
        raise FcosUserError(
            f"{path} does not exist: {folder} is not a finished run folder",
            hint="pass folders written by `fcos run`, after at least one stage",
        )
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        raise FcosUserError(
            f"{path} is over {MAX_SUMMARY_BYTES} bytes: not an fcos summary",
            hint="pass folders written by `fcos run`",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise FcosUserError(
            f"{path}: cannot read it as JSON ({exc})",
            hint="the file is damaged; run the stages again to rewrite it",
        ) from None
    if not isinstance(data, dict):
        raise FcosUserError(
            f"{path}: not a stage table (a JSON object)", hint="pass folders written by `fcos run`"
        )
    return data


def _labels(folders: list[Path]) -> list[str]:
    """Column names: the folder names, or the whole paths when two folders share a name."""
    names = [f.name or str(f) for f in folders]
    if len(set(names)) == len(names):
        return names
    return [str(f) for f in folders]


def compare(summaries: list[tuple[str, dict[str, Any]]], metrics: list[str]) -> dict[str, Any]:
    """``{run: {stage: {metric: value or None, "seconds", "early_stopping"?}}}`` for the
    stages any run has, in pipeline order."""
    out: dict[str, Any] = {}
    for name, summary in summaries:
        row: dict[str, Any] = {}
        for stage in _stages([s for _, s in summaries]):
            entry = summary.get(stage)
            if not isinstance(entry, dict):
                continue
            got = entry.get("metrics") or {}
            row[stage] = {m: got.get(m) for m in metrics}
            row[stage]["seconds"] = entry.get("seconds")
            if isinstance(entry.get("early_stopping"), dict):
                row[stage]["early_stopping"] = entry["early_stopping"]
        out[name] = row
    return out


def _stages(summaries: list[dict[str, Any]]) -> list[str]:
    from fcos_core.config.run_config import STAGES

    seen = [s for s in STAGES if any(s in d for d in summaries)]
    for d in summaries:
        seen += [s for s in d if s not in seen]
    return seen


def format_comparison(table: dict[str, Any], metrics: list[str]) -> str:
    """Plain-text table: rows ``stage metric`` (and ``stage time``, ``stage stopped``),
    one column per run; ``*`` marks the best value of a metric row."""
    from fcos_core.engine.summary import fmt_seconds

    runs = list(table)
    stages = _stages(list(table.values()))
    rows: list[list[str]] = [["stage", "", *runs]]
    for stage in stages:
        for m in metrics:
            values = [table[r].get(stage, {}).get(m) for r in runs]
            nums = [v for v in values if isinstance(v, (int, float)) and v >= 0]
            best = max(nums) if len(nums) > 1 else None  # a lone value is not "best"
            rows.append(
                [
                    stage,
                    m,
                    *(
                        "-"
                        if not isinstance(v, (int, float))
                        else f"{v:.4f}" + ("*" if v == best else "")
                        for v in values
                    ),
                ]
            )
        rows.append(
            [
                stage,
                "time",
                *(
                    fmt_seconds(table[r][stage]["seconds"]) if stage in table[r] else "-"
                    for r in runs
                ),
            ]
        )
        stops = [table[r].get(stage, {}).get("early_stopping") for r in runs]
        if any(stops):
            rows.append(
                [
                    stage,
                    "stopped",
                    *(
                        "-"
                        if not s
                        else f"epoch {s['stopped_epoch']} (best {s['best_epoch']})"
                        if s.get("stopped_epoch")
                        else f"no (best {s.get('best_epoch')})"
                        for s in stops
                    ),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def runs_command(args: argparse.Namespace, host: Any) -> int:
    folders = [Path(d) for d in args.run_dirs]
    if not folders:
        folders = sorted(p.parent for p in DEFAULT_ROOT.glob("*/summary.json"))
        if not folders:
            raise FcosUserError(
                f"no run folders with a summary.json under {DEFAULT_ROOT}/",
                hint="run `fcos run CONFIG` first, or pass run folders",
            )
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise FcosUserError("--metrics names no metric", hint="e.g. --metrics mAP,AP50")
    summaries = [(label, _read_summary(f)) for label, f in zip(_labels(folders), folders)]
    known = {
        k
        for _, s in summaries
        for e in s.values()
        if isinstance(e, dict)
        for k in (e.get("metrics") or {})
    }
    unknown = [m for m in metrics if m not in known]
    if unknown and known:
        import difflib

        near = [
            k for k in sorted(known) if k.lower() == unknown[0].lower()
        ] or difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise FcosUserError(
            f"--metrics {unknown[0]!r} is in none of the summaries; they have "
            f"{', '.join(sorted(known))}",
            hint=f"did you mean {near[0]!r}?" if near else None,
        )
    table = compare(summaries, metrics)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(format_comparison(table, metrics))
    return 0
