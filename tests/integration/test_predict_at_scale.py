"""`fcos predict` on a folder (with a truncated image) and a video, batched, in-process on the
demo config with an untrained model; stage checks; every path read by the shared loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcos_core.cli.main import main

cv2 = pytest.importorskip("cv2")
DEMO = str(Path(__file__).parents[2] / "configs" / "fcos_b0_demo.yaml")


def test_folder_and_video_batched_into_one_predictions_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FCOS_PROGRESS", "1")  # the bar, even though stderr is not a terminal
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png"
        )
    data = (tmp_path / "imgs" / "0.png").read_bytes()
    (tmp_path / "imgs" / "bad.png").write_bytes(data[: len(data) // 3])  # truncated
    writer = cv2.VideoWriter(
        str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48)
    )
    for _ in range(12):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    code = main(
        [
            "predict",
            DEMO,
            "--images",
            str(tmp_path / "imgs"),
            str(tmp_path / "clip.mp4"),
            "--batch-size",
            "4",
            "--score-threshold",
            "0",
            "--out",
            "out",
            "model.post_process.threshold=-20",
            "model.post_process.score_threshold=0",
            "--allow-untrained",
            f"ckpt_dir={tmp_path / 'none'}",
            f"vars.val_ann_file={tmp_path / 'none.json'}",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped:" in err and "bad.png" in err and "Traceback" not in err
    assert "predict:" in err and "/19" in err  # a progress bar over the 7 files + 12 frames
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    side = json.loads((tmp_path / "out" / "predictions.images.json").read_text())
    assert len(side["images"]) == 6 + 12 and [s["file_name"] for s in side["skipped"]] == [
        str(tmp_path / "imgs" / "bad.png")
    ]
    sizes = {im["id"]: (im["width"], im["height"]) for im in side["images"]}
    assert sorted(set(sizes.values())) == [(64, 48), (128, 96)]
    assert {p["image_id"] for p in preds} == set(sizes)  # the untrained model boxes something
    for p in preds:  # COCO results: x, y, w, h inside the picture, ids known
        x, y, w, h = p["bbox"]
        W, H = sizes[p["image_id"]]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= W + 0.01 and y + h <= H + 0.01
        assert 1 <= p["category_id"] <= 5 and 0 <= p["score"] <= 1


@pytest.mark.parametrize("stage", ["qat", "compile"])
def test_a_stage_without_its_files_is_a_clear_error(stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert (
        main(
            [
                "predict",
                DEMO,
                "--images",
                str(tmp_path / "x.png"),
                "--stage",
                stage,
                f"ckpt_dir={tmp_path / 'ckpts'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_a_quantized_stage_checkpoint_for_the_float_model_names_the_stage(
    tmp_path, monkeypatch, capsys
):
    import torch

    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.plugins import load_host

    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEMO, load_host(), [f"ckpt_dir={tmp_path}"])
    state = {f"qat_{k}": v for k, v in build(cfg.values["model"]).state_dict().items()}
    torch.save({"stage": "qat", "qstate": "qat", "state_dict": state}, tmp_path / "q.pth.tar")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert (
        main(
            [
                "predict",
                DEMO,
                "--images",
                str(tmp_path / "x.png"),
                "--checkpoint",
                str(tmp_path / "q.pth.tar"),
                f"ckpt_dir={tmp_path}",
            ]
        )
        == 2
    )
    assert "--stage qat" in capsys.readouterr().err
