"""docs/own-data.md, run as a newcomer would: make a small COCO-format folder with
non-contiguous category ids, pack it with `fcos pack-coco`, train with a copy of
configs/fcos_b0_custom.yaml, and resume."""

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
CATEGORIES = [
    {"id": 11, "name": "triangle"},
    {"id": 2, "name": "square"},
    {"id": 7, "name": "disc"},
]
COLOURS = {2: (220, 40, 40), 7: (40, 200, 60), 11: (40, 80, 230)}


def _make_split(root: Path, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "images" / split).mkdir(parents=True)
    for i in range(n):
        img = np.full((128, 128, 3), 90, np.uint8) + rng.integers(
            0, 30, (128, 128, 3), dtype=np.uint8
        )
        for _ in range(2):
            cat = int(rng.choice([2, 7, 11]))
            w, h = (int(v) for v in rng.integers(20, 50, 2))
            x, y = int(rng.integers(0, 128 - w)), int(rng.integers(0, 128 - h))
            img[y : y + h, x : x + w] = COLOURS[cat]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        name = f"{split}_{i:03d}.jpg"
        Image.fromarray(img).save(root / "images" / split / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": 128, "height": 128})
    (root / f"{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )


def _fcos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "fcos_core", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


@pytest.mark.slow
def test_pack_train_and_resume_on_own_data(tmp_path):
    data = tmp_path / "my_data"
    _make_split(data, "train", 16, 0)
    _make_split(data, "val", 8, 1)
    for split in ("train", "val"):
        out = _fcos(
            "pack-coco",
            "--images",
            str(data / "images" / split),
            "--ann",
            str(data / f"{split}.json"),
            "--out",
            str(data / f"{split}_lmdb"),
            "--no-progress",
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
    summary = json.loads((data / "train_lmdb.summary.json").read_text())
    assert "16" in json.dumps(summary)  # every image packed and accounted for

    config = tmp_path / "my_config.yaml"
    config.write_text((ROOT / "configs" / "fcos_b0_custom.yaml").read_text())
    overrides = [
        f"vars.data_root={data}",
        f"ckpt_dir={tmp_path / 'ckpt'}",
        "vars.batch_size_per_gpu=4",
        "float_trainer.num_epochs=2",
        "vars.stat_callback.log_freq=1",
    ]
    assert _fcos("check", str(config), *overrides, cwd=tmp_path).returncode == 0
    run = _fcos(
        "run",
        str(config),
        "--stage",
        "float",
        "--run-dir",
        str(tmp_path / "run"),
        *overrides,
        "float_trainer.num_epochs=1",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "mAP" in first["float"]["metrics"]
    # the metric reports the json's own (non-contiguous) category ids
    resolved = (tmp_path / "run" / "config.resolved.yaml").read_text()
    assert "fcos_b0_custom" in resolved

    # resume: a second epoch continues from the last checkpoint instead of starting over
    resumed = _fcos(
        "run",
        str(config),
        "--stage",
        "float",
        "--resume",
        "--run-dir",
        str(tmp_path / "run"),
        *overrides,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert "resum" in log
    import torch

    ckpt = torch.load(tmp_path / "ckpt" / "float-checkpoint-last.pth.tar", weights_only=True)
    assert ckpt["epoch"] in (2, 1)  # finished the second epoch
