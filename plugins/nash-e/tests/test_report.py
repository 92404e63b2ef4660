"""Per-layer report: numbers checked against an independent count, JSON + HTML written, the
HTML rendered by headless Chromium shows the layer table; the perf model rewards fusion."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest
import torch

from fcos_plugin_nash_e.backend import NashEBackend
from fcos_plugin_nash_e.target import PERF


def _compile(tmp_path, nash, level="O3", details=True):
    model = nash.MiniDetector(nash.make_mini_fcos(seed=4, size=64), [4, 8]).eval()
    opts = {
        "name": f"mini_{level}",
        "out_dir": str(tmp_path),
        "opt": level,
        "hbm": str(tmp_path / f"mini_{level}.hbm"),
        "layer_details": details,
        "input_source": ["pyramid"],
    }
    return model, NashEBackend().compile(model, {"img": torch.zeros(1, 3, 64, 64)}, opts, tmp_path)


def _independent_macs(model) -> tuple[int, int]:
    """MACs and conv parameters from the integer model's own run (output shapes x kernel)."""
    values = model.body.run_all(torch.zeros(1, 3, 64, 64))
    macs = params = 0
    for op in model.body.program:
        if op.kind == "conv2d":
            w = model.body.ops[op.name].weight
            out = values[op.name]
            macs += out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            params += w.numel() + w.shape[0]  # weights + one bias per output channel
    return macs, params


def test_layer_details_json(tmp_path, nash):
    model, res = _compile(tmp_path, nash)
    jpath = tmp_path / "mini_O3_layers.json"
    assert set(res.files) == {jpath, tmp_path / "mini_O3_layers.html"}
    rep = json.loads(jpath.read_text())
    macs, params = _independent_macs(model)
    assert rep["totals"]["macs"] == macs == res.report["macs"]
    assert rep["totals"]["params"] == params
    assert rep["totals"]["layers"] == len(rep["layers"])
    assert rep["totals"]["cycles"] == sum(r["cycles"] for r in rep["layers"])
    assert rep["totals"]["latency_ms"] == pytest.approx(
        rep["totals"]["cycles"] / PERF.clock_hz * 1e3
    )
    for r in rep["layers"]:
        assert {"layer", "op", "inputs", "output", "macs", "params", "cycles"} <= set(r)
        assert r["cycles"] >= PERF.op_overhead_cycles
        assert r["output"]["dtype"] in ("int8", "int16", "int32", "float32")
    assert rep["perf_model"]["clock_hz"] == PERF.clock_hz
    assert rep["memory_plan"]["peak_bytes"] <= rep["memory_plan"]["unplanned_bytes"]


def test_fusion_lowers_the_estimate_not_the_macs(tmp_path, nash):
    est = {
        lvl: _compile(tmp_path, nash, lvl, details=False)[1].report
        for lvl in ("O0", "O1", "O2", "O3")
    }
    assert len({r["macs"] for r in est.values()}) == 1
    assert est["O0"]["ops"] > est["O1"]["ops"] > est["O2"]["ops"]
    assert (
        est["O0"]["estimated_cycles"]
        > est["O1"]["estimated_cycles"]
        > est["O2"]["estimated_cycles"]
        >= est["O3"]["estimated_cycles"]
    )


class _Table(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.in_layers = False
        self.rows = 0
        self.headers: list[str] = []
        self._th = False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "layers") in attrs:
            self.in_layers = True
        if self.in_layers and tag == "tr":
            self.rows += 1
        self._th = self.in_layers and tag == "th"

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_layers = False
        self._th = False

    def handle_data(self, data):
        if self._th:
            self.headers.append(data.strip())


def test_html_report_is_self_contained(tmp_path, nash):
    _, _res = _compile(tmp_path, nash)
    html = (tmp_path / "mini_O3_layers.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    t = _Table()
    t.feed(html)
    layers = json.loads((tmp_path / "mini_O3_layers.json").read_text())["layers"]
    assert t.rows == len(layers) + 2  # header + layers + total
    assert {"layer", "op", "MACs", "cycles"} <= set(t.headers)


def test_html_report_renders_in_headless_chromium(tmp_path, nash):
    exe = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if exe is None:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium); the DOM check of "
            "the HTML report needs it"
        )
    _, _res = _compile(tmp_path, nash)
    page = (tmp_path / "mini_O3_layers.html").resolve()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    t = _Table()
    t.feed(dom)
    layers = json.loads((tmp_path / "mini_O3_layers.json").read_text())["layers"]
    assert t.rows == len(layers) + 2
    assert 'id="latency"' in dom and " ms" in dom
    assert layers[0]["layer"] in dom
