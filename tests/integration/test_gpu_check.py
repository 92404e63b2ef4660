"""``benchmarks/gpu_check.py --device cpu --quick``: the GPU check's every section runs on CPU
(CPU against itself, torch.compile skipped), so the script a GPU run depends on cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by_section: dict[str, list[dict]] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    assert {"a", "b", "c", "d", "e"} <= set(by_section)
    assert not [r for r in rows if r["status"] == "FAIL"]
    checks = " | ".join(r["check"] for r in rows)
    # the rows a GPU run fills in are all there
    for needle in (
        "demo float stage",
        "fcos B0+BiFPN fp32 train",
        "bf16 autocast",
        "fp16 autocast + GradScaler",
        "torch.compile",
        "torchvision fcos_resnet50_fpn",
        "effdet D0",
        "data: DataLoader",
        "calibration model",
        "integer model",
        "TF32 after the conversions",
        "DDP, 1 process on gloo",
    ):
        assert needle in checks, needle
    assert any(r["value"] == "bit-identical" for r in by_section["d"])
    assert any(r["value"].endswith("img/s") for r in by_section["b"])
    assert "section" in run.stdout.splitlines()[0]  # the one table, on stdout
