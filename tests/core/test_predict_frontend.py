"""The front end of `fcos predict` / `fcos infer`: sources (files, folders, globs, LMDB, video),
the one image loader (EXIF, pixel limit, unreadable pictures skipped), batching,
predictions.json (read back by pycocotools), drawings readable at any size, annotated video."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from fcos_core.cli import image_source
from fcos_core.cli.detect_frontend import add_source_arguments, run_frontend
from fcos_core.cli.detections_output import _render, colour, draw_scale
from fcos_core.cli.image_source import UnreadableImage, load_rgb, open_sources
from fcos_core.errors import FcosUserError

cv2 = pytest.importorskip("cv2")


def _png(path, value, h=32, w=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut in the middle of the entropy-coded data
    return path


def _video(path, frames=20, size=64):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size, size, 3), 10 * i, np.uint8))
    writer.release()
    return path


# --- the loader ----------------------------------------------------------------------------


def test_loader_applies_exif_orientation_and_refuses_what_it_cannot_read(tmp_path, monkeypatch):
    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees for display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").shape == (30, 10, 3)  # as viewers show it
    with pytest.raises(UnreadableImage, match="cannot read"):
        load_rgb(_truncated_jpeg(tmp_path / "t.jpg"))
    (tmp_path / "n.png").write_text("not an image")
    with pytest.raises(UnreadableImage):
        load_rgb(tmp_path / "n.png")
    monkeypatch.setattr(image_source, "MAX_PIXELS", 100)
    with pytest.raises(UnreadableImage, match="over the limit"):
        load_rgb(_png(tmp_path / "big.png", 0))


def test_sources_expand_folders_globs_videos_and_refuse_missing_paths(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "imgs" / "notes.txt").write_text("skipped: not an image extension")
    _video(tmp_path / "v.mp4")
    srcs = open_sources(
        [str(tmp_path / "imgs"), str(tmp_path / "imgs" / "1.png"), str(tmp_path / "*.mp4")]
    )
    assert [s.kind for s in srcs] == ["images", "video"]
    assert srcs[0].count == 4 and srcs[0].paths[0].endswith("0.png")
    frames = list(srcs[1].frames())
    assert srcs[1].count == len(frames) == 20 and frames[3].rgb.shape == (64, 64, 3)
    assert frames[3].name.endswith("v.mp4#000003")
    for bad in ([str(tmp_path / "nope.jpg")], [str(tmp_path / "*.gif")]):
        with pytest.raises(FcosUserError):
            open_sources(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FcosUserError, match="no image files"):
        open_sources([str(tmp_path / "empty")])


def test_lmdb_source_keeps_the_dataset_ids(tmp_path):
    pytest.importorskip("fcos_plugin_coco")
    from PIL import Image

    from fcos_plugin_coco.packer import pack_coco

    # a small COCO folder of our own (ids not 1..n, so an id kept by the source is the dataset's)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for k, image_id in enumerate((7, 42, 1001)):
        name = f"im{image_id}.png"
        pix = rng.integers(0, 256, size=(24 + 8 * k, 32, 3), dtype=np.uint8)
        Image.fromarray(pix).save(tmp_path / "imgs" / name)
        images.append({"id": image_id, "file_name": name, "height": pix.shape[0], "width": 32})
        anns.append(
            {
                "id": k + 1,
                "image_id": image_id,
                "category_id": 3,
                "bbox": [2.0, 3.0, 10.0, 8.0],
                "area": 80.0,
                "iscrowd": 0,
            }
        )
    ann = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    lmdb = tmp_path / "val_lmdb"
    pack_coco(str(tmp_path / "imgs"), str(tmp_path / "ann.json"), str(lmdb), progress=False)

    (src,) = open_sources([str(lmdb)])
    frames = list(src.frames())
    assert src.kind == "lmdb" and src.count == len(images) == len(frames)
    assert sorted(f.image_id for f in frames) == [7, 42, 1001]
    by_id = {f.image_id: f for f in frames}
    assert by_id[42].rgb.shape == (32, 32, 3) and by_id[1001].rgb.ndim == 3


# --- drawing -------------------------------------------------------------------------------


def test_small_images_are_drawn_enlarged_with_readable_coloured_labels():
    assert draw_scale(128, 128) == 4 and draw_scale(1080, 1920) == 1
    rgb = np.zeros((128, 128, 3), np.uint8)
    dets = [
        {"label": 0, "name": "cat", "score": 0.91, "box": [20, 40, 60, 100]},
        {"label": 13, "name": "dog", "score": 0.5, "box": [70, 70, 120, 120]},
    ]
    img = np.asarray(_render(rgb, dets))
    assert img.shape == (512, 512, 3)
    # each class's box and its filled label tag are in that class's colour
    for d in dets:
        c = np.array(colour(d["label"]))
        assert (np.abs(img.reshape(-1, 3).astype(int) - c).sum(1) == 0).sum() > 500
    assert len({colour(i) for i in range(40)}) == 40  # one colour per class


# --- the front end with a stand-in detector -------------------------------------------------


def _args(tmp_path, *argv):
    p = argparse.ArgumentParser()
    add_source_arguments(p)
    return p.parse_args(list(argv))


def _detector(calls):
    def detect(rgbs):
        calls.append(len(rgbs))
        # one box per picture, its score the picture's mean brightness (a known answer)
        return [
            [{"label": 1, "score": float(r.mean()) / 255.0, "box": [1.0, 2.0, 11.0, 22.0]}]
            for r in rgbs
        ]

    return detect


def test_folder_with_a_truncated_image_writes_valid_coco_predictions(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for i in range(7):
        _png(tmp_path / "imgs" / f"{i:02d}.png", 20 * i + 10)
    _truncated_jpeg(tmp_path / "imgs" / "03b.jpg")
    calls: list[int] = []
    args = _args(
        tmp_path,
        "--images",
        str(tmp_path / "imgs"),
        "--batch-size",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--score-threshold",
        "0",
    )
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    assert run_frontend(args, _detector(calls), categories=cats) == 0
    err = capsys.readouterr().err
    assert "skipped:" in err and "03b.jpg" in err and "1 picture(s) could not be read" in err
    assert calls == [3, 2, 2]  # batches of 3 frames, the unreadable one left out of its batch
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    side = json.loads((tmp_path / "out" / "predictions.images.json").read_text())
    assert len(preds) == 7 and len(side["images"]) == 7 and len(side["skipped"]) == 1
    assert {p["category_id"] for p in preds} == {7}  # label 1 -> the 2nd smallest id
    assert preds[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]  # x, y, w, h
    by_id = {im["id"]: im["file_name"] for im in side["images"]}
    for p in preds:
        value = int(by_id[p["image_id"]].rsplit("/", 1)[1][:2]) * 20 + 10
        assert p["score"] == pytest.approx(value / 255.0, abs=1e-5)
    # pycocotools reads it: ground truth = the predicted boxes, so AP is 1
    gt = {
        "images": side["images"],
        "categories": cats,
        "annotations": [
            {
                "id": i + 1,
                "image_id": p["image_id"],
                "category_id": 7,
                "bbox": p["bbox"],
                "area": 200.0,
                "iscrowd": 0,
            }
            for i, p in enumerate(preds)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    coco = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco, coco.loadRes(str(tmp_path / "out" / "predictions.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # a second run never replaces the first one's files
    assert run_frontend(args, _detector([]), categories=cats) == 0
    assert (tmp_path / "out" / "predictions-2.json").is_file()
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == preds


def test_video_gives_one_record_per_frame_and_an_annotated_video(tmp_path, capsys):
    _video(tmp_path / "clip.mp4", frames=20)
    calls: list[int] = []
    args = _args(
        tmp_path,
        "--images",
        str(tmp_path / "clip.mp4"),
        "--batch-size",
        "8",
        "--save-vis",
        str(tmp_path / "vis"),
        "--json",
        "--score-threshold",
        "0",
    )
    assert run_frontend(args, _detector(calls)) == 0
    records = json.loads(capsys.readouterr().out)
    assert calls == [8, 8, 4] and len(records) == 20
    assert [r["image_id"] for r in records] == list(range(1, 21))
    out = tmp_path / "vis" / "clip_det.mp4"
    cap = cv2.VideoCapture(str(out))
    n, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, frame.shape[:2]
    cap.release()
    k = draw_scale(64, 64)
    assert n == 20 and size == (64 * k, 64 * k)


def test_bad_batch_size_is_a_user_error(tmp_path):
    _png(tmp_path / "a.png", 1)
    args = _args(tmp_path, "--images", str(tmp_path / "a.png"), "--batch-size", "0")
    with pytest.raises(FcosUserError, match="--batch-size"):
        run_frontend(args, _detector([]))
