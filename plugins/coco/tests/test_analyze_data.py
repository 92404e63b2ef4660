"""``fcos analyze-data``: every figure against a direct count on a small COCO set with known
boxes (packed LMDB and plain json), the output folder rules, and the fast json path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fcos_core.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(ROOT / "configs" / "fcos_b0_demo.yaml")  # input 128, strides 8..128, Resize 128
STRIDES = (8, 16, 32, 64, 128)
SIZE = 128
CATS = [{"id": 11, "name": "kiwi"}, {"id": 2, "name": "apple"}, {"id": 7, "name": "pear"}]

#: (width, height) of each image and its boxes (x, y, w, h, category id, iscrowd)
IMAGES = [
    (
        (256, 192),
        [
            (10, 10, 200, 150, 2, 0),
            (101, 51, 6, 6, 7, 0),
            (41, 101, 30, 20, 11, 0),
            (0, 0, 50, 50, 2, 1),
        ],
    ),
    ((64, 64), [(5, 5, 20, 30, 7, 0), (30.5, 30.5, 3, 3, 7, 0), (1, 40, 9, 3, 2, 0)]),
    ((100, 80), [(0, 0, 100, 80, 11, 0), (50, 20, 10, 40, 2, 0)]),
    ((120, 90), []),
    ((300, 50), [(3, 2, 290, 45, 11, 0), (150, 10, 12, 12, 2, 0)]),
    ((200, 200), [(20, 30, 150, 40, 7, 0)]),
]


def _write(root: Path, helpers) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    images, anns, files = [], [], {}
    for i, ((w, h), boxes) in enumerate(IMAGES):
        files[f"im{i}.jpg"] = helpers.jpeg_bytes(helpers.scene(rng, h, w))
        images.append({"id": 10 + i, "file_name": f"im{i}.jpg", "width": w, "height": h})
        for x, y, bw, bh, cid, crowd in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 10 + i,
                    "category_id": cid,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": crowd,
                }
            )
    return helpers.write_coco(str(root), images, anns, CATS, files)


def _direct(resize: bool) -> dict:
    """Every figure, counted box by box in plain Python (no numpy vectorisation, no code of
    the command): the nominal Resize(128, keep_ratio) of the demo config, and the strict
    inside test against the model's grid points (fcos_core.models.points.grid_points)."""
    from fcos_core.models.points import grid_points

    pts, pstr = grid_points([(-(-SIZE // s), -(-SIZE // s)) for s in STRIDES], STRIDES)
    pts, pstr = pts.tolist(), pstr.tolist()
    objects, per_image, crowd = [], [], 0
    for (w, h), boxes in IMAGES:
        if resize:
            f = min(SIZE / max(h, w), SIZE / min(h, w))
            nw, nh = int(w * f + 0.5), int(h * f + 0.5)
        else:
            nw, nh = w, h
        sx, sy = nw / w, nh / h
        n = 0
        for x, y, bw, bh, cid, is_crowd in boxes:
            if is_crowd:
                crowd += 1
                continue
            n += 1
            x1, y1 = max(0.0, x * sx), max(0.0, y * sy)
            x2, y2 = min(float(nw), (x + bw) * sx), min(float(nh), (y + bh) * sy)
            inside = dict.fromkeys(STRIDES, 0)
            for (px, py), s in zip(pts, pstr):
                if x1 < px < x2 and y1 < py < y2:
                    inside[int(s)] += 1
            objects.append(
                {
                    "w": x2 - x1,
                    "h": y2 - y1,
                    "cid": cid,
                    "inside": inside,
                    "huge": (x2 - x1) > SIZE or (y2 - y1) > SIZE,
                }
            )
        per_image.append(n)
    longer = [max(o["w"], o["h"]) for o in objects]
    names = {c["id"]: c["name"] for c in CATS}
    return {
        "images": len(IMAGES),
        "objects": len(objects),
        "crowd_boxes": crowd,
        "images_without_objects": per_image.count(0),
        "objects_per_image": {
            "min": min(per_image),
            "median": float(np.median(per_image)),
            "max": max(per_image),
        },
        "objects_per_class": {
            names[c["id"]]: sum(o["cid"] == c["id"] for o in objects)
            for c in sorted(CATS, key=lambda c: c["id"])
        },
        "tiny_objects": sum(v < 8 for v in longer),
        "huge_objects": sum(o["huge"] for o in objects),
        "per_stride": [
            {
                "stride": s,
                "objects_with_at_least_1_point": sum(o["inside"][s] >= 1 for o in objects),
                "objects_with_at_least_4_points": sum(o["inside"][s] >= 4 for o in objects),
            }
            for s in STRIDES
        ],
        "objects_without_point_at_finest_stride": sum(o["inside"][8] == 0 for o in objects),
        "objects_without_point_at_any_stride": sum(not any(o["inside"].values()) for o in objects),
        "_longer": longer,
        "_sqrt_area": [math.sqrt(o["w"] * o["h"]) for o in objects],
    }


def _check(fig: dict, want: dict) -> None:
    for key, value in want.items():
        if key.startswith("_"):
            continue
        if key == "objects_per_image":
            assert {k: fig[key][k] for k in value} == value
        else:
            assert fig[key] == value, key
    for key, raw in (("longer_side_px", want["_longer"]), ("sqrt_area_px", want["_sqrt_area"])):
        for p in (0, 5, 25, 50, 75, 95, 100):
            assert fig[key][f"p{p}"] == pytest.approx(np.percentile(raw, p), abs=1e-3), (key, p)
    hist = fig["histogram"]
    assert sum(hist["longer_side"]) == sum(hist["sqrt_area"]) == want["objects"]
    edges = hist["edges_px"]
    for v in want["_longer"]:  # each box in its bin
        k = max(i for i in range(len(edges) - 1) if edges[i] <= max(v, 1.0))
        assert hist["longer_side"][k] > 0
    assert fig["input_size"] == [SIZE, SIZE] and fig["strides"] == list(STRIDES)
    too_small = float(np.median(want["_longer"])) < 2 * STRIDES[0]
    assert any("too small for the smallest stride" in w for w in fig["warnings"]) == too_small


def _run(*args: str) -> int:
    return main(["analyze-data", DEMO, *args])


def test_figures_of_packed_lmdb_and_json_match_a_direct_count(tmp_path, helpers, capsys):
    from fcos_plugin_coco.packer import pack_coco

    img_dir, ann = _write(tmp_path / "src", helpers)
    root = tmp_path / "data"
    root.mkdir()
    pack_coco(img_dir, ann, str(root / "train_lmdb"), progress=False)
    want = _direct(resize=True)
    assert want["tiny_objects"] and want["objects_without_point_at_any_stride"]  # exercised

    out = tmp_path / "out"
    assert _run(f"vars.data_root={root}", "--out", str(out)) == 0
    text = capsys.readouterr().out
    fig = json.loads((out / "data_report.json").read_text())
    _check(fig, want)
    assert fig["generator"] == "fcos analyze-data"
    assert "min(128/max(h, w), 128/min(h, w))" in fig["resize"]["rule"]
    assert "ratio_range [0.75, 1.25]" in fig["resize"]["rule"]
    assert (out / "data_report.png").stat().st_size > 1000
    assert "stride" in text and "data_report.json" in text

    # the same figures from the json itself (CocoFolder's view), into the same folder
    assert _run(f"vars.data_root={root}", "--ann", ann, "--out", str(out)) == 0
    fig2 = json.loads((out / "data_report.json").read_text())
    for key in want:
        if not key.startswith("_"):
            assert fig2[key] == fig[key], key


def test_huge_boxes_without_resize(tmp_path, helpers):
    _img_dir, ann = _write(tmp_path / "src", helpers)
    out = tmp_path / "out"
    tf = (
        "vars.train_transforms=[{type: RandomCrop, size: [128, 128]}, "
        "{type: Pad, size: [128, 128]}]"
    )
    assert _run(tf, "--ann", ann, "--out", str(out)) == 0
    fig = json.loads((out / "data_report.json").read_text())
    want = _direct(resize=False)
    assert want["huge_objects"] > 0
    assert fig["huge_objects"] == want["huge_objects"]
    assert fig["tiny_objects"] == want["tiny_objects"]
    assert fig["resize"]["rule"] == "no Resize: original pixels"


def test_never_replaces_files_it_did_not_write(tmp_path, helpers, capsys):
    _, ann = _write(tmp_path / "src", helpers)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "data_report.png"
    mine.write_bytes(b"someone else's plot")
    assert _run("--ann", ann, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "--out" in err
    assert mine.read_bytes() == b"someone else's plot"
    assert not (out / "data_report.json").exists()
    mine.unlink()
    (out / "data_report.json").write_text(json.dumps({"not": "ours"}))
    assert _run("--ann", ann, "--out", str(out)) == 2
    (out / "data_report.json").unlink()
    assert _run("--ann", ann, "--out", str(out)) == 0
    assert _run("--ann", ann, "--out", str(out)) == 0  # its own files: replaced
    assert sorted(p.name for p in out.iterdir()) == ["data_report.json", "data_report.png"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _run("--ann", ann, "--out", str(afile)) == 2


def test_user_mistakes_exit_2(tmp_path, capsys):
    assert _run("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")) == 2
    assert "nope" in capsys.readouterr().err
    assert _run("--ann", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")) == 2
    assert "nope.json" in capsys.readouterr().err


def test_fast_json_path_equals_the_packer_rules(tmp_path, helpers):
    from fcos_plugin_coco import data_stats
    from fcos_plugin_coco.annotations import build_index, load_json
    from fcos_plugin_coco.report import PackReport

    _, ann = _write(tmp_path / "src", helpers)
    data = json.loads(Path(ann).read_text())
    data["annotations"] += [  # degenerate, outside, clipped: still the fast path
        {"id": 900, "image_id": 10, "category_id": 2, "bbox": [5, 5, 0, 4]},
        {"id": 901, "image_id": 10, "category_id": 2, "bbox": [300, 5, 4, 4]},
        {"id": 902, "image_id": 11, "category_id": 7, "bbox": [-3, 50, 20, 30], "iscrowd": 1},
    ]
    variants = {"clean": data}
    bad = json.loads(json.dumps(data))
    bad["annotations"].append({"id": "x", "image_id": 10, "category_id": 2, "bbox": [1, 1, 2, 2]})
    bad["images"].append({"id": 99, "file_name": "../up.jpg", "width": 5, "height": 5})
    variants["needs the slow path"] = bad
    for name, d in variants.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(d))
        got = data_stats.read_json(str(path))
        index = build_index(load_json(str(path)), PackReport(on_error="skip", source=name))
        recs = index.images
        assert got.heights.tolist() == [r.height for r in recs], name
        assert got.widths.tolist() == [r.width for r in recs], name
        np.testing.assert_array_equal(got.boxes, np.concatenate([r.boxes for r in recs]))
        assert got.image.tolist() == [n for n, r in enumerate(recs) for _ in r.boxes], name
        cat_ids = [c["id"] for c in index.categories]
        want_labels = [
            -1 if crowd else cat_ids.index(c)
            for r in recs
            for c, crowd in zip(r.category_ids, r.iscrowd)
        ]
        assert got.labels.tolist() == want_labels, name


def test_command_does_not_import_torch(tmp_path, helpers):
    _, ann = _write(tmp_path / "src", helpers)
    code = (
        "import sys; from fcos_core.cli.main import main; "
        f"rc = main(['analyze-data', {DEMO!r}, '--ann', {ann!r}, '--out', "
        f"{str(tmp_path / 'o')!r}]); print('TORCH', 'torch' in sys.modules); sys.exit(rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stdout


def test_warns_when_objects_are_small_for_the_finest_stride(tmp_path, helpers, capsys):
    _, ann = _write(tmp_path / "src", helpers)
    out = tmp_path / "out"
    assert _run("vars.input_size=32", "--ann", ann, "--out", str(out)) == 0
    fig = json.loads((out / "data_report.json").read_text())
    assert fig["input_size"] == [32, 32]
    median = fig["longer_side_px"]["p50"]
    assert median < 2 * 8  # the same objects at a quarter of the demo's input size
    small = [w for w in fig["warnings"] if "too small for the smallest stride" in w]
    assert len(small) == 1 and "Raise input_size" in small[0] and "stride 4" in small[0]
    want = math.ceil(32 * 16 / median / 128) * 128  # median object spanning 2 strides
    assert f"to about {want}" in small[0]
    assert "data check" in capsys.readouterr().err  # logged too
