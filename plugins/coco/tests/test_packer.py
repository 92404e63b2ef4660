"""pack-coco: bad input never crashes it, everything is reported, counts reconcile, resume."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from fcos_core.errors import FcosUserError
from fcos_plugin_coco import lmdb_format as fmt
from fcos_plugin_coco.dataset import Coco
from fcos_plugin_coco.decode import ImageLimits
from fcos_plugin_coco.packer import default_summary_path, pack_coco
from fcos_plugin_coco.report import PackStopped

RED = (250, 10, 10)


def _exif_jpeg(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture
def bad_folder(tmp_path, helpers):
    """A folder with every bad-input case; returns (images dir, json path, expectations)."""
    rng = np.random.default_rng(1)
    jb = helpers.jpeg_bytes
    files: dict[str, bytes] = {}
    images: list[dict] = []
    anns: list[dict] = []

    def add_image(iid, name, w, h, data=None):
        images.append({"id": iid, "file_name": name, "width": w, "height": h})
        if data is not None:
            files[name] = data

    def add_ann(aid, iid, cat, bbox, crowd=0):
        anns.append(
            {
                "id": aid,
                "image_id": iid,
                "category_id": cat,
                "bbox": bbox,
                "area": 1.0,
                "iscrowd": crowd,
            }
        )

    good = jb(helpers.scene(rng, 50, 60))
    add_image(1, "good.jpg", 60, 50, good)
    add_ann(1, 1, 2, [5, 5, 20, 10])  # kept
    add_ann(2, 1, 7, [50, 40, 30, 30])  # clipped to the image
    add_ann(3, 1, 2, [5, 5, 0, 10])  # degenerate (zero width)
    add_ann(4, 1, 2, [10, 10, -3, 5])  # degenerate (negative width)
    add_ann(5, 1, 2, [70, 60, 10, 10])  # outside the image
    add_ann(6, 1, 99, [5, 5, 10, 10])  # unknown category
    add_ann(1, 1, 2, [5, 5, 10, 10])  # duplicate annotation id
    add_ann(7, 999, 2, [5, 5, 10, 10])  # unknown image id
    add_ann(8, 1, 11, [0, 0, 60, 50], crowd=1)  # crowd: kept as ignore
    add_ann("x", 1, 2, [5, 5, 10, 10])  # non-integer annotation id
    add_ann(9, 1, 2, [5, 5, 10])  # bbox with 3 numbers
    add_image(2, "truncated.jpg", 60, 50, jb(helpers.scene(rng, 50, 60))[:400])
    add_ann(10, 2, 2, [1, 1, 5, 5])
    add_image(3, "random.jpg", 60, 50, rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    add_image(4, "missing.jpg", 60, 50)
    add_image(5, "gray.jpg", 40, 30, jb(helpers.scene(rng, 30, 40), mode="L"))
    add_ann(11, 5, 7, [1, 1, 10, 10])
    add_image(6, "cmyk.jpg", 40, 30, jb(helpers.scene(rng, 30, 40), mode="CMYK"))
    add_ann(12, 6, 7, [1, 1, 10, 10])
    rgba = np.dstack([helpers.scene(rng, 30, 40), np.full((30, 40), 128, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    add_image(7, "alpha.png", 40, 30, buf.getvalue())
    add_ann(13, 7, 11, [2, 2, 10, 10])
    # EXIF-rotated photo annotated as displayed (json gives the rotated size): transpose applied
    display = np.full((60, 40, 3), 30, np.uint8)
    display[10:30, 5:25] = RED
    add_image(8, "exif_display.jpg", 40, 60, _exif_jpeg(np.ascontiguousarray(np.rot90(display)), 6))
    add_ann(14, 8, 2, [5, 10, 20, 20])
    # EXIF-rotated photo annotated on stored pixels (json gives the stored size): EXIF ignored
    stored = np.full((40, 60, 3), 30, np.uint8)
    stored[2:12, 30:50] = RED
    add_image(9, "exif_stored.jpg", 60, 40, _exif_jpeg(stored, 6))
    add_ann(15, 9, 2, [30, 2, 20, 10])
    add_image(9, "dup_id.jpg", 60, 40, good)  # duplicate image id
    add_image("nine", "bad_id.jpg", 60, 40, good)  # non-integer image id
    add_image(10, "../escape.jpg", 60, 50)  # escapes the folder
    add_image(11, "wrong_size.jpg", 100, 100, good)  # json size != image size
    add_image(12, "big.jpg", 120, 100, jb(helpers.scene(rng, 100, 120)))  # over max_pixels
    add_ann(16, 12, 2, [1, 1, 10, 10])
    add_image(13, "zero_size.jpg", 0, 50, good)  # bad width
    cats = [*helpers.categories, {"id": 7, "name": "dup"}, {"id": "z", "name": "bad"}]
    img_dir, ann = helpers.write_coco(str(tmp_path / "bad"), images, anns, cats, files)
    return img_dir, ann


LIMITS = ImageLimits(max_pixels=10_000)


def test_every_bad_input_is_reported_and_counts_reconcile(bad_folder, tmp_path):
    img_dir, ann = bad_folder
    out = str(tmp_path / "bad_lmdb")
    report = pack_coco(img_dir, ann, out, limits=LIMITS, progress=False)
    s = report.to_dict()

    assert s["images"]["skipped_by_reason"] == {
        "bad_file_name": 1,
        "bad_image_id": 1,
        "bad_image_size": 1,
        "corrupt_image": 1,
        "duplicate_image_id": 1,
        "missing_file": 1,
        "not_an_image": 1,
        "size_mismatch": 1,
        "too_many_pixels": 1,
    }
    assert s["images"]["in_json"] == 15
    assert s["images"]["packed"] == 6 and s["images"]["read"] == 11
    assert s["images"]["packed"] + s["images"]["skipped"] == s["images"]["in_json"]
    assert s["boxes"]["dropped_by_reason"] == {
        "bad_annotation_id": 1,
        "bad_bbox": 1,
        "degenerate_box": 2,
        "duplicate_annotation_id": 1,
        "image_skipped:corrupt_image": 1,
        "image_skipped:too_many_pixels": 1,
        "outside_image": 1,
        "unknown_category_id": 1,
        "unknown_image_id": 1,
    }
    assert s["boxes"]["in_json"] == 18
    assert s["boxes"]["kept"] + s["boxes"]["dropped"] == s["boxes"]["in_json"]
    assert s["boxes"]["kept"] == 8 and s["boxes"]["kept_crowd"] == 1
    assert s["boxes"]["clipped"] == 1
    assert s["categories"]["skipped_by_reason"] == {
        "bad_category_id": 1,
        "duplicate_category_id": 1,
    }
    assert s["notes_by_reason"] == {
        "box_clipped": 1,
        "cmyk": 1,
        "exif_orientation": 2,
        "format_png": 1,
        "grayscale": 1,
        "mode_rgba": 1,
    }

    # each bad file is named with its reason
    by_file = {(p["file"], p["reason"]) for p in s["problems"]}
    for pair in [
        ("truncated.jpg", "corrupt_image"),
        ("random.jpg", "not_an_image"),
        ("missing.jpg", "missing_file"),
        ("wrong_size.jpg", "size_mismatch"),
        ("big.jpg", "too_many_pixels"),
        ("dup_id.jpg", "duplicate_image_id"),
        ("bad_id.jpg", "bad_image_id"),
        ("zero_size.jpg", "bad_image_size"),
        ("gray.jpg", "grayscale"),
        ("cmyk.jpg", "cmyk"),
        ("alpha.png", "format_png"),
        ("exif_display.jpg", "exif_orientation"),
        ("good.jpg", "degenerate_box"),
        ("good.jpg", "outside_image"),
        ("good.jpg", "box_clipped"),
    ]:
        assert pair in by_file, pair
    escape = [p for p in s["problems"] if p["reason"] == "bad_file_name"]
    assert escape[0]["image_id"] == 10 and "../escape.jpg" in escape[0]["detail"]

    # the summary file next to the LMDB says the same
    with open(default_summary_path(out)) as f:
        on_disk = json.load(f)
    assert on_disk["images"] == s["images"] and on_disk["boxes"] == s["boxes"]
    text = report.render()
    assert "truncated.jpg" in text and "15 in json" in text

    ds = Coco(out)
    assert ds.img_ids == [1, 5, 6, 7, 8, 9]  # json order, skipped ones left out
    assert ds.cat_ids == [2, 7, 11] and ds.classes == ["apple", "pear", "kiwi"]
    samples = {ds[i]["img_id"]: ds[i] for i in range(len(ds))}
    good_s = samples[1]
    np.testing.assert_allclose(
        good_s["gt_bboxes"], [[5, 5, 25, 15], [50, 40, 60, 50], [0, 0, 60, 50]]
    )
    assert good_s["gt_classes"].tolist() == [0, 1, -1]  # crowd -> -1; ids 2, 7 -> 0, 1
    gray = samples[5]["img"]
    assert gray.shape == (30, 40, 3) and (gray[..., 0] == gray[..., 1]).all()
    assert samples[6]["img"].shape == (30, 40, 3) and samples[7]["img"].shape == (30, 40, 3)
    for iid, (y0, x0, y1, x1) in [(8, (10, 5, 30, 25)), (9, (2, 30, 12, 50))]:
        img = samples[iid]["img"]
        box = samples[iid]["gt_bboxes"][0]
        assert tuple(box.astype(int)) == (x0, y0, x1, y1)
        patch = img[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).mean(0)
        assert patch[0] > 200 and patch[1] < 60, (iid, patch)  # red where the box says


def test_stop_policy_names_the_first_problem(bad_folder, tmp_path):
    img_dir, ann = bad_folder
    with pytest.raises(PackStopped) as err:
        pack_coco(
            img_dir,
            ann,
            str(tmp_path / "stop_lmdb"),
            on_error="stop",
            limits=LIMITS,
            progress=False,
        )
    assert "duplicate_category_id" in str(err.value)


def test_stop_policy_on_a_bad_image(tmp_path, helpers):
    rng = np.random.default_rng(0)
    files = {"a.jpg": helpers.jpeg_bytes(helpers.scene(rng, 20, 20)), "b.jpg": b"garbage"}
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 20, "height": 20},
        {"id": 2, "file_name": "b.jpg", "width": 20, "height": 20},
    ]
    img_dir, ann = helpers.write_coco(str(tmp_path / "s"), images, [], helpers.categories, files)
    with pytest.raises(PackStopped, match=r"b\.jpg.*not_an_image"):
        pack_coco(img_dir, ann, str(tmp_path / "s_lmdb"), on_error="stop", progress=False)
    # the good image before it was committed: a skip-policy rerun resumes from there
    report = pack_coco(img_dir, ann, str(tmp_path / "s_lmdb"), progress=False)
    assert report.images_resumed == 1 and report.images_skipped == {"not_an_image": 1}


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", ('{"images": {}, "annotations": [], "categories": []}'), "\xff\xfe"],
)
def test_malformed_json_is_a_user_error(tmp_path, text):
    (tmp_path / "imgs").mkdir()
    ann = tmp_path / "bad.json"
    ann.write_bytes(text.encode("latin-1"))
    with pytest.raises(FcosUserError) as err:
        pack_coco(str(tmp_path / "imgs"), str(ann), str(tmp_path / "o"), progress=False)
    assert "bad.json" in str(err.value)


def test_json_size_limit(tmp_path, clean_coco):
    img_dir, ann = clean_coco()
    with pytest.raises(FcosUserError, match="over the"):
        pack_coco(img_dir, ann, str(tmp_path / "o"), max_json_bytes=100, progress=False)


def _lmdb_items(path: str) -> dict[bytes, bytes]:
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        items = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return items


def test_resume_after_interruption_gives_the_same_lmdb(tmp_path, clean_coco, monkeypatch):
    img_dir, ann = clean_coco(n=6)
    ref = str(tmp_path / "ref_lmdb")
    pack_coco(img_dir, ann, ref, split_name="s", progress=False)

    import fcos_plugin_coco.packer as packer

    monkeypatch.setattr(packer, "_CHUNK_IMAGES", 2)
    real = packer.load_checked
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(packer, "load_checked", interrupted)
    out = str(tmp_path / "resumed_lmdb")
    with pytest.raises(KeyboardInterrupt):
        pack_coco(img_dir, ann, out, split_name="s", progress=False)
    with pytest.raises(FcosUserError, match="did not finish"):
        Coco(out)
    monkeypatch.setattr(packer, "load_checked", real)
    report = pack_coco(img_dir, ann, out, split_name="s", progress=False)
    assert report.images_resumed == 2 and report.images_read == 4
    a, b = _lmdb_items(ref), _lmdb_items(out)
    a.pop(fmt.SUMMARY_KEY), b.pop(fmt.SUMMARY_KEY)
    assert a == b


def test_resume_refuses_another_json(tmp_path, clean_coco):
    img_dir, ann = clean_coco(seed=0)
    out = str(tmp_path / "o_lmdb")
    pack_coco(img_dir, ann, out, progress=False)
    img_dir2, ann2 = clean_coco(seed=1)
    with pytest.raises(FcosUserError, match="another annotation file"):
        pack_coco(img_dir2, ann2, out, progress=False)


def test_map_size_grows_on_demand(tmp_path, clean_coco, monkeypatch):
    import fcos_plugin_coco.packer as packer

    img_dir, ann = clean_coco(n=6)
    small = 16 * 1024  # smaller than the 6 images
    monkeypatch.setattr(packer, "_estimate_map_size", lambda *a: small)
    monkeypatch.setattr(packer, "_CHUNK_IMAGES", 1)
    grown = []
    real_put = packer._put_all

    def spy(env, items, cap):
        real_put(env, items, cap)
        grown.append(env.info()["map_size"])

    monkeypatch.setattr(packer, "_put_all", spy)
    pack_coco(img_dir, ann, str(tmp_path / "grow_lmdb"), progress=False)
    assert max(grown) > small
    assert len(Coco(str(tmp_path / "grow_lmdb"))) == 6
    with pytest.raises(FcosUserError, match="map-size limit"):
        pack_coco(img_dir, ann, str(tmp_path / "cap_lmdb"), max_map_bytes=small, progress=False)


def test_pack_coco_command(tmp_path, clean_coco, capsys):
    from fcos_core.cli.main import main

    img_dir, ann = clean_coco()
    out = str(tmp_path / "cli_lmdb")
    assert (
        main(
            [
                "pack-coco",
                "--images",
                img_dir,
                "--ann",
                ann,
                "--out",
                out,
                "--split-name",
                "mini",
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "6 in json" in text and "6 packed" in text and os.path.exists(out + ".summary.json")
    assert Coco(out).split_name == "mini"
    assert main(["pack-coco", "--images", str(tmp_path / "nope"), "--ann", ann, "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- a complete LMDB is never written in place (readers use lock=False; issue 14) -----------


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_complete_lmdb_is_refused_not_written_in_place(tmp_path, clean_coco, capsys):
    from fcos_core.cli.main import main

    img_dir, ann = clean_coco()
    out = str(tmp_path / "busy_lmdb")
    pack_coco(img_dir, ann, out, progress=False)
    assert len(Coco(out)) == 6  # a reader has it open (lock=False, as in training)
    data = _file_bytes(os.path.join(out, "data.mdb"))
    summary = _file_bytes(default_summary_path(out))
    with pytest.raises(FcosUserError, match="--replace"):
        pack_coco(img_dir, ann, out, progress=False)
    assert (
        main(["pack-coco", "--images", img_dir, "--ann", ann, "--out", out, "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert out in err and "complete" in err and "--replace" in err
    assert _file_bytes(os.path.join(out, "data.mdb")) == data
    assert _file_bytes(default_summary_path(out)) == summary
    assert sorted(os.listdir(tmp_path)) == ["busy_lmdb", "busy_lmdb.summary.json", "clean0"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_packs_next_to_it_and_swaps_it_in(
    tmp_path, clean_coco, capsys, monkeypatch, exchange
):
    import fcos_plugin_coco.packer as packer
    from fcos_core.cli.main import main
    from fcos_plugin_coco import lmdb_env

    swaps = []
    real_exchange = packer._exchange
    monkeypatch.setattr(
        packer,
        "_exchange",
        lambda a, b: swaps.append(a) or (real_exchange(a, b) if exchange else False),
    )

    img_a, ann_a = clean_coco(n=6, seed=0)
    img_b, ann_b = clean_coco(n=4, seed=1)
    out = str(tmp_path / "swap_lmdb")
    pack_coco(img_a, ann_a, out, progress=False)
    held = lmdb_env.reader(out)  # a reader that keeps the old LMDB open
    with held.begin() as txn:
        old_items = {bytes(k): bytes(v) for k, v in txn.cursor()}
    assert (
        main(
            [
                "pack-coco",
                "--images",
                img_b,
                "--ann",
                ann_b,
                "--out",
                out,
                "--replace",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    with held.begin() as txn:  # the open reader still sees the old data, intact
        assert {bytes(k): bytes(v) for k, v in txn.cursor()} == old_items
    assert len(Coco(out)) == 4  # new readers get the new LMDB
    assert not [n for n in os.listdir(tmp_path) if "fcos-pack" in n]
    assert swaps == [out + packer.NEW_SUFFIX]
    summary = json.loads(Path(default_summary_path(out)).read_text())
    assert summary["lmdb"] == os.path.abspath(out) and summary["images"]["packed"] == 4


def test_an_interrupted_replace_keeps_the_old_lmdb_and_resumes(tmp_path, clean_coco, monkeypatch):
    import fcos_plugin_coco.packer as packer

    img_a, ann_a = clean_coco(n=6, seed=0)
    img_b, ann_b = clean_coco(n=6, seed=1)
    out = str(tmp_path / "r_lmdb")
    pack_coco(img_a, ann_a, out, progress=False)
    data = _file_bytes(os.path.join(out, "data.mdb"))
    monkeypatch.setattr(packer, "_CHUNK_IMAGES", 2)
    real = packer.load_checked
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(packer, "load_checked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_coco(img_b, ann_b, out, progress=False, replace=True)
    assert _file_bytes(os.path.join(out, "data.mdb")) == data  # old one untouched
    assert len(Coco(out)) == 6
    monkeypatch.setattr(packer, "load_checked", real)
    report = pack_coco(img_b, ann_b, out, progress=False, replace=True)
    assert report.images_resumed == 2 and report.images_read == 4
    ref = str(tmp_path / "ref_lmdb")
    pack_coco(img_b, ann_b, ref, split_name="r_lmdb", progress=False)
    a, b = _lmdb_items(ref), _lmdb_items(out)
    a.pop(fmt.SUMMARY_KEY), b.pop(fmt.SUMMARY_KEY)
    assert a == b


def test_replace_never_deletes_other_files(tmp_path, clean_coco):
    img_dir, ann = clean_coco()
    out = str(tmp_path / "mixed_lmdb")
    pack_coco(img_dir, ann, out, progress=False)
    notes = os.path.join(out, "notes.txt")
    with open(notes, "wb") as f:
        f.write(b"mine")
    data = _file_bytes(os.path.join(out, "data.mdb"))
    with pytest.raises(FcosUserError, match=r"notes.txt"):
        pack_coco(img_dir, ann, out, progress=False, replace=True)
    assert _file_bytes(notes) == b"mine"
    assert _file_bytes(os.path.join(out, "data.mdb")) == data
