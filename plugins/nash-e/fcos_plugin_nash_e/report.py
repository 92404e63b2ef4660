"""Layer reports: JSON and a self-contained HTML page (no scripts, no external files)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _shape(t: dict[str, Any]) -> str:
    return "x".join(str(d) for d in t["shape"]) + f" {t['dtype']}"


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML document: summary, assumptions, and a table of layers."""
    e = html.escape
    tot = report["totals"]
    pm = report["perf_model"]
    rows = []
    for r in report["layers"]:
        ins = "<br>".join(e(_shape(t)) for t in r["inputs"])
        fused = e(", ".join(r["fused"])) if r["fused"] else ""
        rows.append(
            "<tr>"
            f"<td class=n>{r['index']}</td><td class=l>{e(r['layer'])}"
            + (f"<div class=f>fused: {fused}</div>" if fused else "")
            + "</td>"
            f"<td>{e(r['op'])}</td><td class=s>{ins}</td><td class=s>{e(_shape(r['output']))}</td>"
            f"<td class=n>{_fmt_int(r['macs'])}</td><td class=n>{_fmt_int(r['params'])}</td>"
            f"<td class=n>{_fmt_int(r['ddr_bytes'])}</td>"
            f"<td class=n>{_fmt_int(r['cycles'])}</td><td>{e(r['bound'])}</td>"
            f"<td class=n>{r['time_us']:.2f}</td></tr>"
        )
    mem = report.get("memory_plan") or {}
    mem_line = (
        f"<li>activation arena (O3 buffer plan): {_fmt_int(mem['peak_bytes'])} bytes "
        f"(without reuse: {_fmt_int(mem['unplanned_bytes'])})</li>"
        if mem
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(report["model"])} - fcos NASH-E layer report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}
th{{background:#eef;position:sticky;top:0}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}}
td.s{{font-family:monospace;white-space:nowrap}} td.l{{font-family:monospace}}
div.f{{color:#666;font-size:11px}} tfoot td{{font-weight:bold;background:#f6f6f6}}
</style></head><body>
<h1>{e(report["model"])}</h1>
<p>fcos NASH-E compile report, optimisation level <b>{e(str(report.get("opt")))}</b>.</p>
<h2>Summary</h2>
<ul id="summary">
<li>layers: {tot["layers"]}</li>
<li>MACs: {_fmt_int(tot["macs"])}</li>
<li>parameters: {_fmt_int(tot["params"])} ({_fmt_int(tot["param_bytes"])} bytes)</li>
<li>DDR traffic: {_fmt_int(tot["ddr_bytes"])} bytes</li>
<li>estimated cycles: {_fmt_int(tot["cycles"])}</li>
<li>estimated latency: <b id="latency">{tot["latency_ms"]:.3f} ms</b></li>
{mem_line}
</ul>
<h2>Performance model (assumed target, not measured)</h2>
<p>clock {pm["clock_hz"] / 1e9:.2f} GHz; conv engine {pm["mac_array"][0]}x{pm["mac_array"][1]}
int8 MACs ({pm["macs_per_cycle"]} MAC/cycle; int16 inputs x{pm["int16_mac_factor"]});
depthwise {pm["depthwise_lanes"]} lanes; vector unit {pm["vector_bytes_per_cycle"]} B/cycle;
DDR {pm["ddr_bytes_per_cycle"]} B/cycle; {pm["op_overhead_cycles"]} cycles per op.
cycles = max(compute, memory) + overhead.</p>
<h2>Layers</h2>
<table id="layers">
<thead><tr><th>#</th><th>layer</th><th>op</th><th>inputs</th><th>output</th><th>MACs</th>
<th>params</th><th>DDR bytes</th><th>cycles</th><th>bound</th><th>time (us)</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
<tfoot><tr><td></td><td>total</td><td></td><td></td><td></td>
<td class=n>{_fmt_int(tot["macs"])}</td><td class=n>{_fmt_int(tot["params"])}</td>
<td class=n>{_fmt_int(tot["ddr_bytes"])}</td><td class=n>{_fmt_int(tot["cycles"])}</td><td></td>
<td class=n>{tot["latency_ms"] * 1e3:.2f}</td></tr></tfoot>
</table>
</body></html>
"""


def write_reports(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``{stem}_layers.json`` and ``{stem}_layers.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / f"{stem}_layers.json"
    hpath = out_dir / f"{stem}_layers.html"
    jpath.write_text(json.dumps(report, indent=1))
    hpath.write_text(render_html(report), encoding="utf-8")
    return jpath, hpath
