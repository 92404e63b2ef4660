"""Build a small real COCO detection set from the fluorescence nuclei image in the stardist wheel.

The `stardist` distribution on PyPI (BSD-3-Clause) ships one 512x512 fluorescence microscopy
image of nuclei, ``stardist/data/images/img2d.tif``, with its instance mask ``mask2d.tif``
(~125 labelled nuclei, longer side 10-39 px, median 29). This script turns it into a COCO
*instances* folder fcos (and any other COCO tool) can train on:

* boxes come from the instance mask: the tight box of each label's pixels inside a crop;
* the split is by region, so no nucleus pixel is in both sets: **val** is the bottom-right
  quadrant (a 256x256 image, 29 nuclei, counting those the quadrant border cuts) in its 8
  orientations -- 4 quarter turns, each also mirrored -- so that one validation pass scores 232
  instances (``--val-orientations 1``: the quadrant only, as first published);
  **train** is every 256x256 crop at stride 64 that does not overlap that quadrant (9 crops);
* images are written as 8-bit grayscale PNGs (the image's values are 0..235 in uint16).

Usage (fetches the wheel from PyPI with ``pip download --no-deps``, the only network use)::

    python tools/make_nuclei_coco.py --out data/nuclei
    python tools/make_nuclei_coco.py --out data/nuclei --wheel stardist-0.9.2-....whl

The result is ``OUT/images/{train,val}/*.png``, ``OUT/train.json`` and ``OUT/val.json``, with
one category ``nucleus`` (id 1). The pixels are checked against a SHA-256 so every machine
builds the same set. The script refuses to write into a folder that already holds files it did
not create (``--force`` only rebuilds a folder this script made).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

import numpy as np

STARDIST_VERSION = "0.9.2"
IMAGE_MEMBER = "stardist/data/images/img2d.tif"
MASK_MEMBER = "stardist/data/images/mask2d.tif"
# SHA-256 of the decoded pixels (image as uint8, mask as int32, C order): pins the data, so
# every machine builds the same set whatever the wheel's TIFF encoding
IMAGE_SHA256 = "f5bd38ab39448298bf06f3efa44ad2e5337866877f521d400ab2932b163bc22e"
MASK_SHA256 = "a603c41c5ad47a1ebb5bc0b0b3b61094091cabdf20689f2300257e0304349675"
MARKER = ".fcos-nuclei.json"
CROP = 256
TRAIN_STEP = 64
# the validation quadrant in all 8 orientations by default: one 29-nucleus image moved a trained
# model's mAP by several points from one epoch to the next and under any small perturbation of
# the weights, so a 2-point quantization bar could not be told from noise; 8 views score 232
# instances (docs/own-data.md). Nuclei have no preferred orientation, and the views share no
# pixel with the training crops.
VAL_ORIENTATIONS = 8
MAX_MEMBER_BYTES = 16 << 20  # both TIFFs are 0.5 MB; refuse anything absurd before reading


class BuildError(Exception):
    """A user-facing failure: printed without a traceback, exit code 2."""


def fetch_wheel(dest: str) -> str:
    """``pip download --no-deps stardist==VERSION`` into ``dest``; returns the wheel path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "-d",
        dest,
        f"stardist=={STARDIST_VERSION}",
    ]
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(
            f"could not download the stardist wheel ({' '.join(cmd)}): {e}; "
            "download it yourself and pass --wheel PATH"
        ) from None
    wheels = sorted(glob.glob(os.path.join(dest, "stardist-*.whl")))
    if not wheels:
        raise BuildError(f"pip download left no stardist wheel in {dest}; pass --wheel PATH")
    return wheels[-1]


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BuildError(f"{zf.filename} has no {name}: is it a stardist wheel?") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise BuildError(
            f"{zf.filename}: {name} declares {info.file_size} bytes "
            f"(> {MAX_MEMBER_BYTES}); not the expected image"
        )
    with zf.open(info) as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise BuildError(f"{zf.filename}: {name} is larger than it declares")
    return data


def _decode_tiff(data: bytes, what: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.shape != (512, 512):
        raise BuildError(
            f"{what}: expected a 512x512 single-channel TIFF, got "
            f"{None if arr is None else arr.shape}"
        )
    return arr


def load_image_and_mask(wheel: str) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 image and the int32 instance mask from the wheel."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise BuildError(f"cannot open {wheel} as a wheel (zip): {e}") from None
    with zf:
        img = _decode_tiff(_read_member(zf, IMAGE_MEMBER), f"{wheel}:{IMAGE_MEMBER}")
        mask = _decode_tiff(_read_member(zf, MASK_MEMBER), f"{wheel}:{MASK_MEMBER}")
    if int(img.max()) > 255:
        raise BuildError(
            f"{wheel}: the image has values up to {int(img.max())}; this script "
            "expects the 0..255 range of the shipped image"
        )
    img, mask = img.astype(np.uint8), mask.astype(np.int32)
    for what, arr, want in (("image", img, IMAGE_SHA256), ("mask", mask, MASK_SHA256)):
        got = hashlib.sha256(arr.tobytes()).hexdigest()
        if got != want:
            raise BuildError(
                f"{wheel}: the {what}'s pixels differ from stardist "
                f"{STARDIST_VERSION}'s (sha256 {got[:12]}..., expected "
                f"{want[:12]}...); use the stardist=={STARDIST_VERSION} wheel"
            )
    return img, mask


def boxes_in_crop(mask: np.ndarray, x0: int, y0: int, size: int) -> list[list[float]]:
    """COCO ``[x, y, w, h]`` boxes (crop pixels) of every instance with pixels in the crop.

    Pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``, so a label whose pixels span columns
    ``c0..c1`` has ``x = c0`` and ``w = c1 - c0 + 1``. Rows are ordered by label id.
    """
    crop = mask[y0 : y0 + size, x0 : x0 + size]
    labels = np.unique(crop)
    out = []
    for lab in labels[labels > 0]:
        ys, xs = np.nonzero(crop == lab)
        out.append(
            [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]
        )
    return out


def split_regions(shape: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
    """Crop origins ``(x0, y0)``: val = the bottom-right quadrant, train = stride-64 crops
    that do not overlap it."""
    h, w = shape
    val = [(w - CROP, h - CROP)]
    vx, vy = val[0]
    train = []
    for y0 in range(0, h - CROP + 1, TRAIN_STEP):
        for x0 in range(0, w - CROP + 1, TRAIN_STEP):
            overlaps = x0 + CROP > vx and y0 + CROP > vy
            if not overlaps:
                train.append((x0, y0))
    return {"train": train, "val": val}


# the 8 orientations of a square (the dihedral group): (name, quarter turns, mirrored first)
ORIENTATIONS = [
    ("r0", 0, False),
    ("r90", 1, False),
    ("r180", 2, False),
    ("r270", 3, False),
    ("m0", 0, True),
    ("m90", 1, True),
    ("m180", 2, True),
    ("m270", 3, True),
]


def orient(arr: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """``arr`` mirrored left-right (when ``mirrored``), then turned ``turns`` quarter turns
    counter-clockwise; a contiguous copy."""
    return np.ascontiguousarray(np.rot90(arr[:, ::-1] if mirrored else arr, turns))


def build_split(
    img: np.ndarray,
    mask: np.ndarray,
    split: str,
    origins: list[tuple[int, int]],
    orientations: int = 1,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The COCO dict and ``{file_name: pixels}`` of one split; each crop in its first
    ``orientations`` orientations (:data:`ORIENTATIONS`), boxes measured on the turned mask."""
    images, annotations, files = [], [], {}
    for x0, y0 in origins:
        pix_crop = img[y0 : y0 + CROP, x0 : x0 + CROP]
        mask_crop = mask[y0 : y0 + CROP, x0 : x0 + CROP]
        for tag, turns, mirrored in ORIENTATIONS[:orientations]:
            i = len(images) + 1
            suffix = "" if orientations == 1 else f"_{tag}"
            name = f"nuclei_{split}_x{x0:03d}_y{y0:03d}{suffix}.png"
            files[name] = orient(pix_crop, turns, mirrored)
            images.append({"id": i, "file_name": name, "width": CROP, "height": CROP})
            for box in boxes_in_crop(orient(mask_crop, turns, mirrored), 0, 0, CROP):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": 1,
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                    }
                )
    coco = {
        "info": {
            "description": f"stardist {STARDIST_VERSION} img2d.tif nuclei, {split}",
            "version": "1",
        },
        "licenses": [{"id": 1, "name": "BSD-3-Clause (stardist)"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus", "supercategory": "cell"}],
    }
    return coco, files


def _check_out(out: str, force: bool) -> None:
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise BuildError(f"--out {out} exists and is not a folder; choose another path")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    if MARKER not in entries:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise BuildError(
            f"--out {out} already holds files this script did not create "
            f"({shown}); choose an empty or new folder (nothing was changed)"
        )
    if not force:
        raise BuildError(f"--out {out} already holds a nuclei set; pass --force to rebuild it")
    ours = {MARKER, "train.json", "val.json", "images"}
    foreign = [e for e in entries if e not in ours]
    if foreign:
        raise BuildError(
            f"--out {out} holds files this script did not create ({foreign}); "
            "move them away or choose another folder (nothing was changed)"
        )


def write_dataset(
    out: str,
    img: np.ndarray,
    mask: np.ndarray,
    force: bool = False,
    val_orientations: int = VAL_ORIENTATIONS,
) -> dict:
    """Write both splits into ``out``; returns a summary (images and boxes per split). The
    validation quadrant is written in its first ``val_orientations`` orientations (1 or 8)."""
    if val_orientations not in (1, 8):
        raise BuildError(
            f"--val-orientations {val_orientations}: use 1 (the quadrant as it "
            "is) or 8 (all its flips and quarter turns)"
        )
    import cv2

    _check_out(out, force)
    summary: dict[str, Any] = {
        "source": f"stardist=={STARDIST_VERSION}:{IMAGE_MEMBER}",
        "pixels_sha256": hashlib.sha256(img.tobytes()).hexdigest(),
        "val_orientations": val_orientations,
    }
    os.makedirs(out, exist_ok=True)
    # the marker first: an interrupted build is recognised as ours and can be rebuilt
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump({"tool": "tools/make_nuclei_coco.py", "state": "building"}, f)
    for split, origins in split_regions(img.shape).items():
        coco, files = build_split(
            img, mask, split, origins, val_orientations if split == "val" else 1
        )
        img_dir = os.path.join(out, "images", split)
        os.makedirs(img_dir, exist_ok=True)
        for name, pix in files.items():
            if not cv2.imwrite(os.path.join(img_dir, name), pix):
                raise BuildError(f"could not write {os.path.join(img_dir, name)}")
        _write_json(os.path.join(out, f"{split}.json"), coco)
        summary[split] = {"images": len(coco["images"]), "boxes": len(coco["annotations"])}
    _write_json(
        os.path.join(out, MARKER),
        {"tool": "tools/make_nuclei_coco.py", "state": "complete", **summary},
    )
    return summary


def _write_json(path: str, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (new or empty)")
    ap.add_argument("--wheel", help="a downloaded stardist wheel (default: pip download it)")
    ap.add_argument(
        "--force", action="store_true", help="rebuild a folder this script created before"
    )
    ap.add_argument(
        "--val-orientations",
        type=int,
        default=VAL_ORIENTATIONS,
        choices=(1, 8),
        help="write the validation quadrant in 8 orientations (flips and quarter "
        "turns: 232 instances, the default) or only as it is (1: 29)",
    )
    args = ap.parse_args(argv)
    try:
        if args.wheel:
            if not os.path.isfile(args.wheel):
                raise BuildError(f"--wheel {args.wheel} is not a file")
            img, mask = load_image_and_mask(args.wheel)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                img, mask = load_image_and_mask(fetch_wheel(tmp))
        summary = write_dataset(
            args.out, img, mask, force=args.force, val_orientations=args.val_orientations
        )
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: train {summary['train']['images']} images / "
        f"{summary['train']['boxes']} boxes, val {summary['val']['images']} image(s) / "
        f"{summary['val']['boxes']} boxes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
