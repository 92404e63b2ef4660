"""User mistakes and a full disk in ``fcos pack-coco`` / ``fcos demo-data``: exit 2 with the
cause and the fix, never a traceback (issue 14, item 10)."""

from __future__ import annotations

import json
import os

import lmdb
import pytest

from fcos_core.cli.main import main
from fcos_core.errors import FcosUserError
from fcos_plugin_coco.annotations import read_bounded
from fcos_plugin_coco.dataset import Coco
from fcos_plugin_coco.packer import pack_coco


@pytest.mark.parametrize(
    "option,value",
    [
        ("--max-json-mb", "nan"),
        ("--max-map-gb", "inf"),
        ("--max-image-mb", "-inf"),
        ("--max-json-mb", "0"),
        ("--max-map-gb", "1e300"),
        ("--max-image-mb", "x"),
    ],
)
def test_pack_coco_refuses_sizes_that_are_not_finite_and_positive(
    tmp_path, clean_coco, capsys, option, value
):
    img_dir, ann = clean_coco()
    out = str(tmp_path / "o_lmdb")
    with pytest.raises(SystemExit) as exc:
        main(["pack-coco", "--images", img_dir, "--ann", ann, "--out", out, option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not os.path.exists(out)


def test_pack_coco_command_checks_sizes_given_programmatically(tmp_path, clean_coco):
    import argparse

    from fcos_plugin_coco.commands import pack_coco_command

    img_dir, ann = clean_coco()
    args = argparse.Namespace(
        images=img_dir,
        ann=ann,
        out=str(tmp_path / "o"),
        split_name=None,
        on_error="skip",
        summary=None,
        max_json_mb=float("nan"),
        max_pixels=1000,
        max_image_mb=1.0,
        max_map_gb=float("inf"),
        no_progress=True,
        replace=False,
    )
    with pytest.raises(FcosUserError, match="--max-json-mb must be a finite number"):
        pack_coco_command(args)


def test_a_json_integer_over_pythons_digit_limit_is_a_user_error(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    ann = tmp_path / "huge.json"
    # json.loads raises a plain ValueError (not JSONDecodeError) for this
    ann.write_text('{"images": [{"id": ' + "9" * 5000 + '}], "annotations": [], "categories": []}')
    with pytest.raises(FcosUserError, match="more than 4300 digits") as err:
        pack_coco(str(tmp_path / "imgs"), str(ann), str(tmp_path / "o"), progress=False)
    assert "huge.json" in str(err.value) and "regenerate" in str(err.value)
    assert (
        main(
            [
                "pack-coco",
                "--images",
                str(tmp_path / "imgs"),
                "--ann",
                str(ann),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "huge.json" in capsys.readouterr().err


def test_read_bounded_does_not_allocate_the_limit(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"{}")
    # read(n) allocates n bytes up front: asking for the limit itself raised MemoryError
    assert read_bounded(path, 2**62) == b"{}"
    with pytest.raises(FcosUserError, match="over the"):
        read_bounded(path, 1)


class _FullDisk:
    """An lmdb Environment whose write transactions fail like a full disk after ``budget``
    successful puts (a real ENOSPC needs a full filesystem)."""

    def __init__(self, env: lmdb.Environment, budget: int) -> None:
        self._env, self.budget = env, budget

    def __getattr__(self, name):
        return getattr(self._env, name)

    def begin(self, write=False, **kw):
        txn = self._env.begin(write=write, **kw)
        return _FullDiskTxn(txn, self) if write else txn


class _FullDiskTxn:
    def __init__(self, txn, owner: _FullDisk) -> None:
        self._txn, self._owner = txn, owner

    def __enter__(self):
        self._txn.__enter__()
        return self

    def __exit__(self, *exc):
        return self._txn.__exit__(*exc)

    def put(self, key, value):
        if self._owner.budget <= 0:
            raise lmdb.Error("mdb_txn_commit: No space left on device")
        self._owner.budget -= 1
        return self._txn.put(key, value)


def test_disk_full_while_packing_is_a_user_error_and_the_rerun_resumes(
    tmp_path, clean_coco, monkeypatch, capsys
):
    import fcos_plugin_coco.packer as packer

    img_dir, ann = clean_coco(n=6)
    out = str(tmp_path / "full_lmdb")
    real_open = lmdb.open
    # meta + 3 images fit (one commit per image), the 4th image's commit fails
    monkeypatch.setattr(packer, "_CHUNK_IMAGES", 1)
    monkeypatch.setattr(lmdb, "open", lambda *a, **k: _FullDisk(real_open(*a, **k), 4))
    assert (
        main(["pack-coco", "--images", img_dir, "--ann", ann, "--out", out, "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and out in err
    assert "No space left on device" in err and "the disk is full" in err
    assert "consistent" in err and "rerun the same command" in err
    monkeypatch.setattr(lmdb, "open", real_open)

    # the LMDB holds the committed images and is readable; a rerun packs only the rest
    env = real_open(out, readonly=True, lock=False)
    with env.begin() as txn:
        stored = sum(1 for k, _ in txn.cursor() if k.startswith(b"img/"))
    env.close()
    assert stored == 3
    report = pack_coco(img_dir, ann, out, progress=False)
    assert report.images_resumed == 3 and report.images_read == 3
    assert len(Coco(out)) == 6


def test_map_size_limit_says_the_lmdb_is_kept_and_how_to_resume(tmp_path, clean_coco, monkeypatch):
    import fcos_plugin_coco.packer as packer

    img_dir, ann = clean_coco(n=6)
    monkeypatch.setattr(packer, "_estimate_map_size", lambda *a: 16 * 1024)
    with pytest.raises(FcosUserError) as err:
        pack_coco(img_dir, ann, str(tmp_path / "cap_lmdb"), max_map_bytes=16 * 1024, progress=False)
    text = str(err.value)
    assert "cap_lmdb" in text and "consistent" in text and "raise --max-map-gb" in text


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--max-object", "8"], "min_object (10) must be <= max_object (8)"),
        (["--max-object", "2", "--min-object", "1"], "max_object must be >= 4"),
    ],
)
def test_demo_data_refuses_impossible_object_sizes(tmp_path, capsys, extra, message):
    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--num-train", "2", "--num-val", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "--min-object" in err and "Traceback" not in err


def test_demo_data_with_small_objects_works(tmp_path):
    # max_object 8 drew distractors with rng.uniform(8, 6.4): a numpy ValueError traceback
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo-data",
                "--out",
                str(out),
                "--num-train",
                "6",
                "--num-val",
                "2",
                "--max-object",
                "8",
                "--min-object",
                "4",
            ]
        )
        == 0
    )
    data = json.loads((out / "instances_train.json").read_text())
    sizes = [max(a["bbox"][2:]) for a in data["annotations"] if not a["iscrowd"]]
    assert sizes and max(sizes) <= 9


def test_render_scene_when_min_object_exceeds_the_image():
    import numpy as np

    from fcos_plugin_coco.demo.shapes import render_scene

    # min_object 24 <= 3/4 of image_size 32 passes validation, but 0.9 * 26 px < 24
    for i in range(20):
        img, _ = render_scene(np.random.default_rng(i), 26, 32, 24, 64, 3)
        assert img.shape == (32, 26, 3)
