"""`fcos export` (three formats, each reloaded and compared) and `fcos predict --save-vis`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parents[2]


def _fcos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcos_core", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("export", ".pt2"),
                                        ("onnx", ".onnx")])
def test_export_formats_reload_and_match(fmt, suffix, tmp_path):
    out = tmp_path / f"m{suffix}"
    run = _fcos("export", str(ROOT / "configs" / "fcos_b0_demo.yaml"), "--format", fmt,
                "--out", str(out), f"ckpt_dir={tmp_path / 'none'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 100_000
    assert "untrained" in run.stdout and "max |difference| to the model" in run.stdout


def test_export_lists_formats_and_rejects_a_missing_checkpoint(tmp_path):
    listed = _fcos("export", "--list-formats", cwd=tmp_path)
    assert listed.returncode == 0
    assert {line.split()[0] for line in listed.stdout.splitlines()} == {"torchscript", "export",
                                                                       "onnx"}
    bad = _fcos("export", str(ROOT / "configs" / "fcos_b0_demo.yaml"), "--checkpoint",
                str(tmp_path / "nope.pth.tar"), cwd=tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_predict_draws_detections(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(96, 160), (200, 120)]):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[20:60, 30:80] = (220, 40, 40)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    run = _fcos("predict", str(ROOT / "configs" / "fcos_b0_demo.yaml"), "--images", *paths,
                "--save-vis", str(tmp_path / "vis"), "--score-threshold", "0", "--json",
                f"ckpt_dir={tmp_path / 'none'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert [r["image"] for r in results] == paths
    for r, (h, w) in zip(results, [(96, 160), (200, 120)]):
        vis = Image.open(r["vis"])
        assert vis.size == (w, h)  # drawn on the original image
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h  # mapped back and clipped
    missing = _fcos("predict", str(ROOT / "configs" / "fcos_b0_demo.yaml"), "--images",
                    str(tmp_path / "nope.jpg"), f"ckpt_dir={tmp_path / 'none'}", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
