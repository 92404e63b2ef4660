"""Demo data: deterministic, COCO-valid, non-contiguous ids, idempotent and race-safe."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.dataset import Coco, CocoFolder
from fcos_plugin_coco.demo.generate import MARKER, DemoParams, ensure_demo

SMALL = DemoParams(num_train=8, num_val=4, image_size=96, min_object=8, max_object=48)


def _digest(root: str) -> dict[str, str]:
    out = {}
    for sub in ("images/train", "images/val"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            with open(os.path.join(root, sub, name), "rb") as f:
                out[f"{sub}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    for name in ("instances_train.json", "instances_val.json"):
        with open(os.path.join(root, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_layout_ids_and_determinism(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ensure_demo(a, SMALL)
    ensure_demo(b, SMALL)
    assert _digest(a) == _digest(b)  # same bytes each run
    for name in (
        "train_lmdb",
        "val_lmdb",
        "instances_train.json",
        "instances_val.json",
        "images/train",
        "images/val",
        MARKER,
    ):
        assert os.path.exists(os.path.join(a, name)), name
    data = json.loads(Path(a, "instances_train.json").read_text())
    assert len(data["images"]) == 8 and {c["id"] for c in data["categories"]} == {1, 3, 5, 7, 9}
    assert [c["id"] for c in data["categories"]] != [1, 3, 5, 7, 9]  # unsorted in the json
    per_image = {im["id"]: 0 for im in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        im = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert 0 < ann["area"] <= w * h
        per_image[ann["image_id"]] += 1
    assert min(per_image.values()) >= 1
    ds = Coco(os.path.join(a, "train_lmdb"))
    assert ds.cat_ids == [1, 3, 5, 7, 9] and ds.classes[0] == "circle" and len(ds) == 8
    s = ds[0]
    assert s["img"].shape[:2] == (data["images"][0]["height"], data["images"][0]["width"])
    assert set(s["gt_classes"].tolist()) <= set(range(-1, 5))
    other = str(tmp_path / "c")
    ensure_demo(
        other,
        DemoParams(num_train=8, num_val=4, image_size=96, min_object=8, max_object=48, seed=1),
    )
    assert _digest(other) != _digest(a)


def test_objects_are_where_the_boxes_say(tmp_path):
    """The class colour dominates inside each non-crowd box (boxes match pixels)."""
    root = str(tmp_path / "d")
    ensure_demo(root, SMALL)
    ds = CocoFolder(os.path.join(root, "images", "val"), os.path.join(root, "instances_val.json"))
    import colorsys

    hues = {0: 0.0, 1: 120.0, 2: 225.0, 3: 50.0, 4: 300.0}
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        for box, label in zip(s["gt_bboxes"], s["gt_classes"]):
            if label < 0 or min(box[2] - box[0], box[3] - box[1]) < 10:
                continue
            x0, y0, x1, y1 = box.astype(int)
            patch = s["img"][y0:y1, x0:x1].reshape(-1, 3) / 255.0
            hs = np.array([colorsys.rgb_to_hsv(*p) for p in patch[:: max(1, len(patch) // 200)]])
            diff = np.abs((hs[:, 0] * 360 - hues[int(label)] + 180) % 360 - 180)
            assert np.mean((diff < 30) & (hs[:, 1] > 0.35)) > 0.2
            checked += 1
    assert checked > 0


def test_idempotent_and_settings_mismatch(tmp_path):
    root = str(tmp_path / "e")
    ensure_demo(root, SMALL)
    before = os.stat(os.path.join(root, "instances_train.json")).st_mtime_ns
    ensure_demo(root, SMALL)
    assert os.stat(os.path.join(root, "instances_train.json")).st_mtime_ns == before
    bigger = DemoParams(num_train=9, num_val=4, image_size=96, min_object=8, max_object=48)
    with pytest.raises(FcosUserError, match="--force"):
        ensure_demo(root, bigger)
    ensure_demo(root, bigger, force=True)
    assert len(Coco(os.path.join(root, "train_lmdb"))) == 9


def _race(root: str) -> None:
    ensure_demo(root, SMALL)


def test_two_processes_racing(tmp_path):
    root = str(tmp_path / "race")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_race, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(Coco(os.path.join(root, "val_lmdb"))) == 4
    assert not [n for n in os.listdir(root) if n.startswith(".fcos-demo-tmp")]


def test_demo_data_command(tmp_path, capsys):
    from fcos_core.cli.main import main

    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "demo-data",
                "--out",
                out,
                "--num-train",
                "5",
                "--num-val",
                "2",
                "--image-size",
                "64",
                "--min-object",
                "8",
                "--max-object",
                "30",
            ]
        )
        == 0
    )
    assert "5 train / 2 val" in capsys.readouterr().out
    assert len(Coco(os.path.join(out, "train_lmdb"))) == 5
    assert main(["demo-data", "--out", out, "--min-object", "50", "--max-object", "20"]) == 2
    assert "min_object" in capsys.readouterr().err


# --- never deletes or overwrites what it did not create (issue 14) --------------------------


def _user_folder(root) -> dict[str, bytes]:
    """A folder with a user's own photo and json where the demo would write."""
    files = {
        os.path.join("images", "train", "my_photo.jpg"): b"\xff\xd8 my own photo bytes",
        "instances_train.json": b'{"images": [], "mine": true}',
    }
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return files


def _snapshot(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.mark.parametrize("force", [False, True])
def test_demo_data_command_refuses_a_users_files(tmp_path, capsys, force):
    from fcos_core.cli.main import main

    root = tmp_path / "mine"
    _user_folder(root)
    before = _snapshot(root)
    argv = [
        "demo-data",
        "--out",
        str(root),
        "--num-train",
        "4",
        "--num-val",
        "2",
        "--image-size",
        "64",
        "--min-object",
        "8",
        "--max-object",
        "30",
    ]
    assert main(argv + (["--force"] if force else [])) == 2
    err = capsys.readouterr().err
    assert "images" in err and "instances_train.json" in err and "fix:" in err
    assert _snapshot(root) == before  # same files, same bytes, nothing added


@pytest.mark.parametrize("kind", ["Coco", "CocoFolder", "COCODetectionMetric"])
def test_demo_if_missing_refuses_a_folder_with_users_files(tmp_path, kind):
    from fcos_plugin_coco.metric import COCODetectionMetric

    root = tmp_path / "data"
    _user_folder(root)
    before = _snapshot(root)
    build = {
        "Coco": lambda: Coco(str(root / "train_lmdb"), demo_if_missing=True),
        "CocoFolder": lambda: CocoFolder(
            str(root / "images" / "val"), str(root / "instances_val.json"), demo_if_missing=True
        ),
        "COCODetectionMetric": lambda: COCODetectionMetric(
            str(root / "instances_val.json"), demo_if_missing=True
        ),
    }[kind]
    with pytest.raises(FcosUserError, match=r"instances_train.json"):
        build()
    assert _snapshot(root) == before


def test_force_keeps_files_added_to_a_demo_folder(tmp_path):
    root = str(tmp_path / "f")
    ensure_demo(root, SMALL)
    extra = os.path.join(root, "images", "train", "holiday.jpg")
    with open(extra, "wb") as f:
        f.write(b"precious")
    other = DemoParams(num_train=9, num_val=4, image_size=96, min_object=8, max_object=48)
    with pytest.raises(FcosUserError, match=r"holiday.jpg"):
        ensure_demo(root, other, force=True)
    with open(extra, "rb") as f:
        assert f.read() == b"precious"
    assert len(Coco(os.path.join(root, "train_lmdb"))) == 8  # the old demo is untouched


def test_an_interrupted_generation_is_redone(tmp_path, monkeypatch):
    import fcos_plugin_coco.packer as packer

    root = str(tmp_path / "cut")
    real = packer.pack_coco
    calls = {"n": 0}

    def cut_short(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # train packed, val cut short
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(packer, "pack_coco", cut_short)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(root, SMALL)
    assert not os.path.exists(os.path.join(root, MARKER))
    monkeypatch.setattr(packer, "pack_coco", real)
    ensure_demo(root, SMALL)  # its own half-written targets are replaced, no error
    assert len(Coco(os.path.join(root, "val_lmdb"))) == 4
    assert not os.path.exists(os.path.join(root, ".fcos-demo-pending.json"))
