"""Coco (LMDB) and CocoFolder give identical samples; workers, pickling, DDP sampling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from fcos_core.errors import FcosUserError
from fcos_plugin_coco.collate import collate_2d
from fcos_plugin_coco.dataset import Coco, CocoFolder
from fcos_plugin_coco.packer import pack_coco
from fcos_plugin_coco.transforms.crop import RandomCrop
from fcos_plugin_coco.transforms.flip import RandomFlip
from fcos_plugin_coco.transforms.hsv import AugmentHSV
from fcos_plugin_coco.transforms.pad import Pad
from fcos_plugin_coco.transforms.resize import Resize
from fcos_plugin_coco.transforms.tensor import Normalize, ToTensor


def _train_transforms():
    return [
        Resize((64, 64), ratio_range=(0.5, 2.0)),
        RandomCrop((64, 64)),
        Pad(divisor=64),
        RandomFlip(0.5, 0.5),
        AugmentHSV(0.015, 0.7, 0.4),
        ToTensor(to_yuv=True),
        Normalize(128.0, 128.0),
    ]


@pytest.fixture
def packed(tmp_path, clean_coco):
    img_dir, ann = clean_coco(n=6)
    out = str(tmp_path / "train_lmdb")
    pack_coco(img_dir, ann, out, progress=False)
    return img_dir, ann, out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k
        elif isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype, k
            np.testing.assert_array_equal(va, vb, err_msg=k)
        else:
            assert va == vb, k


def test_lmdb_and_folder_give_identical_samples(packed):
    img_dir, ann, out = packed
    lm, fo = Coco(out), CocoFolder(img_dir, ann)
    assert len(lm) == len(fo) == 6 and lm.img_ids == fo.img_ids
    assert lm.cat_ids == fo.cat_ids == [2, 7, 11] and lm.num_classes == 3
    assert lm.classes == fo.classes == ["apple", "pear", "kiwi"]
    for i in range(len(lm)):
        _same(lm[i], fo[i])
    # and with the seed's random train transforms under the same random state
    lm.transforms, fo.transforms = _train_transforms(), _train_transforms()
    for i in range(len(lm)):
        np.random.seed(i)
        a = lm[i]
        np.random.seed(i)
        _same(a, fo[i])


def test_sample_format_follows_the_interface(packed, helpers):
    import json

    _img_dir, ann, out = packed
    data = json.loads(Path(ann).read_text())
    ds = Coco(out)
    s = ds[0]
    img0 = data["images"][0]
    assert s["img"].dtype == np.uint8 and s["img"].shape == (img0["height"], img0["width"], 3)
    assert s["img_id"] == img0["id"] == 100
    assert s["ori_shape"] == s["img_shape"] == s["pad_shape"] == (img0["height"], img0["width"])
    assert s["scale_factor"].dtype == np.float32 and s["scale_factor"].tolist() == [1.0, 1.0]
    anns = [a for a in data["annotations"] if a["image_id"] == 100]
    expect = [
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in anns
    ]
    assert s["gt_bboxes"].dtype == np.float32
    np.testing.assert_allclose(s["gt_bboxes"], expect, rtol=1e-6)
    order = sorted(c["id"] for c in helpers.categories)
    labels = [-1 if a["iscrowd"] else order.index(a["category_id"]) for a in anns]
    assert s["gt_classes"].dtype == np.int64 and s["gt_classes"].tolist() == labels
    empty = ds[1]  # the image without boxes
    assert empty["gt_bboxes"].shape == (0, 4) and empty["gt_classes"].shape == (0,)


def test_pickle_before_and_after_first_use(packed):
    _, _, out = packed
    ds = Coco(out, transforms=[ToTensor()])
    clone = pickle.loads(pickle.dumps(ds))
    first = ds[2]
    clone2 = pickle.loads(pickle.dumps(ds))  # holds no handle: still picklable after use
    _same(clone[2], first)
    _same(clone2[2], first)


def test_dataloader_workers_after_the_parent_opened_the_lmdb(packed):
    _, _, out = packed
    ds = Coco(out, transforms=[Resize((48, 48)), Pad(size=(48, 48)), ToTensor()])
    serial = [ds[i] for i in range(len(ds))]  # parent holds an open handle before forking
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_2d)
    batches = list(loader)
    imgs = torch.cat([b["img"] for b in batches])
    assert imgs.shape == (6, 3, 48, 48)
    assert torch.equal(imgs, torch.stack([s["img"] for s in serial]))
    assert [i for b in batches for i in b["img_id"]] == ds.img_ids


def test_distributed_sampler_covers_the_dataset(packed):
    _, _, out = packed
    ds = Coco(out)
    seen = []
    for rank in range(4):
        sampler = DistributedSampler(ds, num_replicas=4, rank=rank, shuffle=True, seed=1)
        seen += list(sampler)
    assert sorted(set(seen)) == list(range(len(ds))) and len(seen) == 8  # padded to 4 x 2


def test_missing_and_wrong_paths(tmp_path, packed):
    img_dir, ann, out = packed
    with pytest.raises(FcosUserError, match="does not exist"):
        Coco(str(tmp_path / "nope"))
    with pytest.raises(FcosUserError, match=r"not a readable LMDB|not one written"):
        Coco(img_dir)
    with pytest.raises(FcosUserError, match="image folder"):
        CocoFolder(str(tmp_path / "nope"), ann)
    with pytest.raises(TypeError, match="transforms\\[0\\]"):
        Coco(out, transforms=["Resize"])


def test_folder_reports_an_undecodable_image(packed):
    img_dir, ann, _ = packed
    ds = CocoFolder(img_dir, ann)
    with open(os.path.join(img_dir, "img_3.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(FcosUserError, match=r"img_3.jpg"):
        ds[3]


def test_build_from_yaml_config(packed):
    """The registered schemas validate a HAT-style block and build working objects."""
    from fcos_core.build import build
    from fcos_core.config.loader import parse_yaml_text
    from fcos_core.config.validate import Validator
    from fcos_core.plugins import load_host

    _, _, out = packed
    text = f"""
dataset:
  type: Coco
  data_path: {out}
  transforms:
    - {{type: Resize, img_scale: [64, 64], ratio_range: [0.5, 2.0], keep_ratio: true}}
    - {{type: RandomCrop, size: [64, 64]}}
    - {{type: Pad, divisor: 64}}
    - {{type: RandomFlip, px: 0.5, py: 0}}
    - {{type: AugmentHSV, hgain: 0.015, sgain: 0.7, vgain: 0.4}}
    - {{type: ToTensor, to_yuv: true}}
    - {{type: Normalize, mean: 128.0, std: 128.0}}
"""
    data, lines = parse_yaml_text(text)
    host = load_host()
    v = Validator(host.registries, lines)
    node = v.check_component("datasets", data["dataset"], ("dataset",))
    assert not v.problems, v.problems
    ds = build(node)
    assert isinstance(ds, Coco) and len(ds.transforms) == 7
    batch = collate_2d([ds[0], ds[1]])
    assert batch["img"].shape == (2, 3, 64, 64) and batch["img"].abs().max() <= 1.0
    assert batch["scale_factor"].shape == (2, 2)


def test_demo_if_missing_generates_once(tmp_path, monkeypatch):
    import fcos_plugin_coco.demo.generate as gen

    monkeypatch.setattr(
        gen,
        "DEFAULT_PARAMS",
        gen.DemoParams(num_train=6, num_val=3, image_size=64, min_object=8, max_object=30),
    )
    root = tmp_path / "demo"
    with pytest.raises(FcosUserError):
        Coco(str(root / "train_lmdb"))
    train = Coco(str(root / "train_lmdb"), demo_if_missing=True)
    val = CocoFolder(
        str(root / "images" / "val"), str(root / "instances_val.json"), demo_if_missing=True
    )
    assert len(train) == 6 and len(val) == 3 and train.cat_ids == [1, 3, 5, 7, 9]
    lm_val = Coco(str(root / "val_lmdb"))
    for i in range(3):
        _same(lm_val[i], val[i])
    with pytest.raises(FcosUserError, match="still missing"):
        Coco(str(root / "other_lmdb"), demo_if_missing=True)
