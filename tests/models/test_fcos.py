"""The FCOS detector: modes, loss normalisation, construction errors, config build."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from fcos_core.build import build
from fcos_core.config import load_config
from fcos_core.models.fcos import FCOS
from fcos_core.models.head import FCOSHead
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.post_process import FCOSMultiStrideFilter


def batch(num_classes=3, n_img=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = [
        torch.tensor([[4.0, 6, 30, 40], [20, 18, 60, 50], [0, 0, 64, 20]]),
        torch.tensor([[10.0, 10, 50, 50]]),
    ][:n_img]
    labels = [torch.tensor([0, num_classes - 1, -1]), torch.tensor([1])][:n_img]
    return {
        "img": torch.randn(n_img, 3, size, size, generator=g),
        "gt_bboxes": boxes,
        "gt_classes": labels,
        "img_shape": [(size, size)] * n_img,
    }


def test_training_returns_named_losses_with_gradients(tiny):
    torch.manual_seed(0)
    model = tiny.make_fcos().train()
    losses = model(batch())
    assert set(losses) == {"cls", "reg", "centerness"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.conv_reg.weight.grad.abs().sum() > 0
    assert model.backbone.stages[0][0].weight.grad.abs().sum() > 0


def test_loss_values_match_independent_computation(tiny):
    torch.manual_seed(1)
    model = tiny.make_fcos().train()
    b = batch()
    outputs = model.body(b["img"])
    losses = model.compute_losses(outputs, b["gt_bboxes"], b["gt_classes"])
    t = model.targets(outputs, b["gt_bboxes"], b["gt_classes"])
    s = len(model.strides)
    cls = torch.cat([o.flatten(2).transpose(1, 2) for o in outputs[:s]], 1)  # [B, P, C]
    box = torch.cat([o.flatten(2).transpose(1, 2) for o in outputs[s : 2 * s]], 1)
    ctr = torch.cat([o.flatten(2).transpose(1, 2) for o in outputs[2 * s :]], 1)[..., 0]
    pos = t["pos_mask"]
    npos = pos.sum().float()
    onehot = torch.nn.functional.one_hot(t["labels"], 4)[..., :3].float()
    ref_cls = (sigmoid_focal_loss(cls, onehot) * t["label_weights"][..., None]).sum() / npos
    pts, st = t["points"][None].expand_as(box[..., :2]), t["point_strides"]
    d = box * st[None, :, None]
    pred = torch.stack(
        [
            pts[..., 0] - d[..., 0],
            pts[..., 1] - d[..., 1],
            pts[..., 0] + d[..., 2],
            pts[..., 1] + d[..., 3],
        ],
        -1,
    )
    w = t["bbox_weights"][pos]
    ref_reg = (generalized_box_iou_loss(pred[pos], t["bbox_targets"][pos]) * w).sum() / w.sum()
    ref_ctr = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            ctr[pos], t["centerness_targets"][pos], reduction="sum"
        )
        / npos
    )
    torch.testing.assert_close(losses["cls"], ref_cls)
    torch.testing.assert_close(losses["reg"], ref_reg)
    torch.testing.assert_close(losses["centerness"], ref_ctr)


def test_empty_batch_trains(tiny):
    model = tiny.make_fcos().train()
    b = batch()
    b["gt_bboxes"] = [torch.zeros(0, 4)] * 2
    b["gt_classes"] = [torch.zeros(0, dtype=torch.long)] * 2
    losses = model(b)
    assert losses["reg"].item() == 0 and losses["centerness"].item() == 0
    assert losses["cls"].item() > 0
    sum(losses.values()).backward()  # gradients flow (cls only)


def test_eval_returns_detections_in_input_frame(tiny):
    torch.manual_seed(2)
    model = tiny.make_fcos().eval()
    with torch.no_grad():
        model.head.conv_cls.bias.fill_(1.0)  # make everything a confident detection
        dets = model(batch())
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels"}
        n = len(d["scores"])
        assert 0 < n <= 100 and d["boxes"].shape == (n, 4) and d["labels"].shape == (n,)
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        assert d["labels"].max() < 3


def test_deploy_model_returns_body_outputs_and_exports(tiny):
    torch.manual_seed(3)
    deploy = tiny.make_fcos(train=False).eval()
    img = torch.randn(1, 3, 64, 64)
    out = deploy(img)
    ref = deploy.body(img)
    assert len(out) == 6 and all(torch.equal(a, b) for a, b in zip(out, ref))
    with pytest.raises(RuntimeError, match="cannot train"):
        deploy.train()(batch())
    deploy.eval()
    compiled = tiny.make_fcos(train=False, for_compile=True).eval()
    compiled.load_state_dict(deploy.state_dict())
    fixed = compiled(img)
    assert len(fixed) == 8 and fixed[6].shape == (1, 1, 8, 8)
    ep = torch.export.export(compiled, (img,))
    for a, b in zip(ep.module()(img), fixed):
        torch.testing.assert_close(a, b)
    # state dicts of the training and deploy models line up (checkpoints transfer)
    assert set(tiny.make_fcos().state_dict()) == set(deploy.state_dict())


def test_upscaled_head_decodes_the_same_boxes(tiny):
    torch.manual_seed(4)
    a = tiny.make_fcos(train=False).eval()
    b = tiny.make_fcos(train=False, upscale_bbox_pred=True).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for m in (a, b):
            m.head.conv_cls.bias.fill_(0.5)
        da, db = a(batch()), b(batch())
    for x, y in zip(da, db):
        torch.testing.assert_close(x["boxes"], y["boxes"])
        assert len(x["boxes"]) > 0


@pytest.mark.parametrize("num_classes", [1, 5])
def test_any_number_of_classes(tiny, num_classes):
    model = tiny.make_fcos(num_classes=num_classes).train()
    b = batch(num_classes=num_classes)
    if num_classes == 1:
        b["gt_classes"] = [torch.tensor([0, 0, -1]), torch.tensor([0])]
    losses = model(b)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.body(b["img"])[0].shape[1] == num_classes


def _parts(tiny, num_classes=3, strides=(8, 16)):
    backbone = tiny.TinyBackbone(strides)
    neck = tiny.TinyNeck(strides, backbone.out_channels, 32)
    head = FCOSHead(
        num_classes,
        list(strides),
        list(strides),
        dict.fromkeys(strides, 32),
        feat_channels=32,
        stacked_convs=1,
    )
    return backbone, neck, head


def _losses(n=4):
    return dict(
        loss_cls=FocalLoss(n),
        loss_centerness=CrossEntropyLoss(True, "centerness"),
        loss_reg=GIoULoss(),
    )


def test_construction_errors_name_both_values(tiny):
    from fcos_core.models.dynamic_target import DynamicFcosTarget

    def tgt(strides=(8, 16), c=3):
        return DynamicFcosTarget(
            list(strides), c, c, 10, FocalLoss(c + 1, reduction="none"), GIoULoss(reduction="none")
        )

    backbone, neck, _ = _parts(tiny)
    head = FCOSHead(3, [8, 16, 32], [8, 16, 32], {8: 32, 16: 32, 32: 32})
    with pytest.raises(
        ValueError,
        match=r"head.in_strides=\[8, 16, 32\] does not match "
        r"neck.out_strides=\[8, 16\]",
    ):
        FCOS(backbone, neck, head)
    with pytest.raises(
        ValueError,
        match=r"targets.strides=\[8, 16, 32\] does not match "
        r"head.out_strides=\[8, 16\]",
    ):
        FCOS(*_parts(tiny), targets=tgt((8, 16, 32)), **_losses())
    with pytest.raises(
        ValueError,
        match=r"targets.cls_out_channels=5 does not match "
        "head.num_classes=3",
    ):
        FCOS(*_parts(tiny), targets=tgt(c=5), **_losses())
    with pytest.raises(ValueError, match=r"loss_cls.num_classes=81"):
        FCOS(*_parts(tiny), targets=tgt(), **_losses(81))
    with pytest.raises(ValueError, match="missing: loss_reg"):
        FCOS(*_parts(tiny), targets=tgt(), loss_cls=FocalLoss(4), loss_centerness=GIoULoss("c"))
    with pytest.raises(ValueError, match="same loss_name 'reg'"):
        FCOS(
            *_parts(tiny),
            targets=tgt(),
            loss_cls=FocalLoss(4),
            loss_centerness=GIoULoss(),
            loss_reg=GIoULoss(),
        )
    with pytest.raises(ValueError, match=r"post_process.strides=\[8\]"):
        FCOS(*_parts(tiny), post_process=FCOSMultiStrideFilter([8]))
    b2, n2, h2 = _parts(tiny)
    n2.out_channels = 16
    with pytest.raises(ValueError, match="stride2channels"):
        FCOS(b2, n2, h2)


# --- building from a YAML config through the registries (stand-ins: conftest.py) -------


def test_build_from_config(host_and_config):
    host, path = host_and_config
    cfg = load_config(path, host)
    model = build(cfg.values["model"])
    deploy = build(cfg.values["deploy_model"])
    assert isinstance(model, FCOS) and model.num_classes == 4 and model.head.int16_output
    losses = model.train()(batch(num_classes=4))
    assert set(losses) == {"cls", "reg", "centerness"}
    out = deploy.eval()(torch.zeros(1, 3, 64, 64))
    assert len(out) == 8  # 3 x 2 strides + max logits


def test_config_mismatch_is_reported_at_the_block(host_and_config, tmp_path):
    host, good = host_and_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        good.read_text()
        .replace("cls_out_channels: 4", "cls_out_channels: 3")
        .replace("background_label: 4", "background_label: 3")
        .replace(
            "num_classes: 5, alpha: 0.25, gamma: 2.0,\n               loss_weight:"
            " 1.0, reduction: none",
            "num_classes: 4, alpha: 0.25, gamma: 2.0,\n               loss_weight:"
            " 1.0, reduction: none",
        )
    )
    from fcos_core.errors import ConfigError

    cfg = load_config(bad, host)
    with pytest.raises(
        ConfigError,
        match=r"targets.cls_out_channels=3 does not match "
        "head.num_classes=4",
    ):
        build(cfg.values["model"])
