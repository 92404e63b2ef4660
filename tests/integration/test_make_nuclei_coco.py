"""tools/make_nuclei_coco.py: boxes from an instance mask, the region split, the folder rules.

The real image comes from the stardist wheel (network); these tests build a synthetic instance
mask and a fake wheel, and check the boxes against torchvision's ``masks_to_boxes``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_nuclei_coco.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_nuclei_coco", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _instances(seed: int = 0, n: int = 60) -> np.ndarray:
    """A 512x512 int32 mask of ``n`` labelled ellipses (later ones paint over earlier ones)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((512, 512), np.int32)
    for label in range(1, n + 1):
        cx, cy = (int(v) for v in rng.integers(0, 512, 2))
        ax, ay = (int(v) for v in rng.integers(4, 20, 2))
        cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, label, -1)
    return mask


def test_boxes_match_torchvision_masks_to_boxes(tool):
    mask = _instances()
    for x0, y0 in [(0, 0), (64, 192), (256, 256)]:
        got = tool.boxes_in_crop(mask, x0, y0, 256)
        crop = mask[y0 : y0 + 256, x0 : x0 + 256]
        labels = [lab for lab in np.unique(crop) if lab > 0]
        ref = masks_to_boxes(torch.from_numpy(np.stack([crop == lab for lab in labels])))
        assert len(got) == len(labels)
        # masks_to_boxes gives inclusive pixel indices; COCO boxes cover whole pixels
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in got])
        torch.testing.assert_close(xyxy, ref + torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_split_keeps_train_crops_out_of_the_val_quadrant(tool):
    regions = tool.split_regions((512, 512))
    assert regions["val"] == [(256, 256)]
    assert len(regions["train"]) == 9
    for x0, y0 in regions["train"]:
        assert x0 + 256 <= 256 or y0 + 256 <= 256  # no pixel of the val quadrant
        assert x0 % 64 == 0 and y0 % 64 == 0


def _fake_wheel(path: Path, img: np.ndarray, mask: np.ndarray) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for member, arr in (
            (IMAGE_MEMBER, img.astype(np.uint16)),
            (MASK_MEMBER, mask.astype(np.uint16)),
        ):
            ok, buf = cv2.imencode(".tif", arr)
            assert ok
            zf.writestr(member, io.BytesIO(buf.tobytes()).getvalue())


IMAGE_MEMBER = "stardist/data/images/img2d.tif"
MASK_MEMBER = "stardist/data/images/mask2d.tif"


def test_wheel_with_other_pixels_is_refused(tool, tmp_path):
    wheel = tmp_path / "stardist-0.0-py3-none-any.whl"
    _fake_wheel(wheel, np.zeros((512, 512), np.uint8), _instances())
    with pytest.raises(tool.BuildError, match="differ from stardist"):
        tool.load_image_and_mask(str(wheel))


def _cv2_view(arr: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """The reference orientation by OpenCV's own flip and rotate (not the tool's numpy)."""
    out = cv2.flip(arr, 1) if mirrored else arr
    for _ in range(turns):
        out = cv2.rotate(out, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return out


def test_val_views_are_the_quadrants_8_orientations_with_their_boxes(tool, tmp_path):
    mask = _instances(1)
    img = (np.arange(512 * 512) % 200).astype(np.uint8).reshape(512, 512)
    summary = tool.write_dataset(str(tmp_path / "out"), img, mask)  # the default: 8 views
    val = json.loads((tmp_path / "out" / "val.json").read_text())
    quadrant, pixels = mask[256:, 256:], img[256:, 256:]
    n = len(np.unique(quadrant[quadrant > 0]))
    assert summary["val"] == {"images": 8, "boxes": 8 * n} and len(val["annotations"]) == 8 * n
    seen = set()
    for (tag, turns, mirrored), info in zip(tool.ORIENTATIONS, val["images"]):
        assert info["file_name"].endswith(f"_{tag}.png")
        pix = cv2.imread(
            str(tmp_path / "out" / "images" / "val" / info["file_name"]), cv2.IMREAD_UNCHANGED
        )
        ref_pix = _cv2_view(pixels, turns, mirrored)
        np.testing.assert_array_equal(pix, ref_pix)
        seen.add(pix.tobytes())
        # boxes: torchvision's masks_to_boxes on OpenCV's view of the instance mask
        view = _cv2_view(quadrant.astype(np.int32), turns, mirrored)
        labels = [lab for lab in np.unique(view) if lab > 0]
        ref = masks_to_boxes(torch.from_numpy(np.stack([view == lab for lab in labels])))
        got = [a["bbox"] for a in val["annotations"] if a["image_id"] == info["id"]]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in got])
        torch.testing.assert_close(xyxy, ref + torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert len(seen) == 8  # eight different views


def test_written_set_is_coco_and_counts_every_instance(tool, tmp_path):
    mask = _instances(1)
    img = (np.arange(512 * 512) % 200).astype(np.uint8).reshape(512, 512)
    summary = tool.write_dataset(str(tmp_path / "out"), img, mask, val_orientations=1)
    val = json.loads((tmp_path / "out" / "val.json").read_text())
    quadrant = mask[256:, 256:]
    assert len(val["annotations"]) == len(np.unique(quadrant[quadrant > 0]))
    assert summary["val"] == {"images": 1, "boxes": len(val["annotations"])}
    name = val["images"][0]["file_name"]
    pix = cv2.imread(str(tmp_path / "out" / "images" / "val" / name), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(pix, img[256:, 256:])
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert len(train["images"]) == 9
    assert {a["category_id"] for a in train["annotations"]} == {1}


def test_never_writes_into_a_folder_of_user_files(tool, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    photo = out / "photo.jpg"
    photo.write_bytes(b"user bytes")
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    mask = _instances(2)
    img = np.zeros((512, 512), np.uint8)
    for force in (False, True):
        with pytest.raises(tool.BuildError, match="did not create"):
            tool.write_dataset(str(out), img, mask, force=force)
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg"]
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == digest
    # its own folder: refused without --force, rebuilt with it
    tool.write_dataset(str(tmp_path / "set"), img, mask)
    with pytest.raises(tool.BuildError, match="--force"):
        tool.write_dataset(str(tmp_path / "set"), img, mask)
    tool.write_dataset(str(tmp_path / "set"), img, mask, force=True)


def test_cli_reports_user_errors_with_exit_2(tool, tmp_path, capsys):
    assert tool.main(["--out", str(tmp_path / "x"), "--wheel", str(tmp_path / "none.whl")]) == 2
    assert "is not a file" in capsys.readouterr().err
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    assert tool.main(["--out", str(tmp_path / "x"), "--wheel", str(bad)]) == 2
    assert "cannot open" in capsys.readouterr().err
